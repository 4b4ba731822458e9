//! `host stats`: the essay's reports ([`toolhost::stats`]) from the data
//! dir's invocation records, as `GET /v1/stats` answers them.

use super::data::DataDir;
use toolhost::clock::now_ms;
use toolhost::ids::TenantId;
use toolhost::stats::{self, Report};
use toolhost::{Error, ErrorKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tenant (`_` for invocations run without one).
    #[arg(long, default_value = "_", value_parser = TenantId::existing)]
    tenant: TenantId,
    /// Only this tool.
    #[arg(long)]
    tool: Option<String>,
    /// Only this function (its full name, e.g. `crm/divide`).
    #[arg(long)]
    function: Option<String>,
    /// Only this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Start of the range: Unix ms, 2026-11-26, 2026-11-26T10:00:00Z, or a
    /// period ago (24h, 7d). Default: 24 hours before --until.
    #[arg(long)]
    since: Option<String>,
    /// End of the range (exclusive), same forms. Default: now.
    #[arg(long)]
    until: Option<String>,
    /// Print the report as JSON (the `/v1/stats` document).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataDir,
}

pub async fn main(args: Args) -> i32 {
    super::exit_code(run(args).await)
}

async fn run(args: Args) -> toolhost::Result<i32> {
    let now = now_ms();
    let time = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| {
                stats::parse_time(s, now)
                    .map_err(|e| Error::new(ErrorKind::InvalidArgs, format!("--{name}: {e}")))
            })
            .transpose()
    };
    let query = stats::Query {
        tool: args.tool.clone(),
        function: args.function.clone(),
        workflow: args.workflow.clone(),
        since_ms: time("since", &args.since)?,
        until_ms: time("until", &args.until)?,
    };
    // A bad range is bad usage here.
    stats::range_of(&query, now).map_err(|e| Error::new(ErrorKind::InvalidArgs, e.message))?;
    let storage = args.data.storage().await?;
    let report = stats::report(storage.as_ref(), &args.tenant, &query, now).await?;
    if args.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        super::out_str(&text(&report));
    }
    Ok(0)
}

fn ms(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The report as aligned text.
fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tenant {}: {} to {}, {} invocations{}",
        r.tenant,
        r.range.since,
        r.range.until,
        r.sample_size,
        if r.truncated {
            format!(
                " (truncated: the newest, from {})",
                stats::format_time(r.covered_since_ms)
            )
        } else {
            String::new()
        }
    );
    let t = &r.totals;
    let _ = writeln!(
        out,
        "all: failure rate {:.1}%, p50 {} ms, p95 {} ms, p99 {} ms, cost ${:.6}",
        t.failure_rate * 100.0,
        ms(t.latency_ms.p50),
        ms(t.latency_ms.p95),
        ms(t.latency_ms.p99),
        t.cost_usd
    );
    let _ = writeln!(
        out,
        "\n{:<20} {:<24} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>12}  failures by kind",
        "TOOL",
        "FUNCTION",
        "COUNT",
        "OK",
        "ERROR",
        "REFUSED",
        "FAIL%",
        "P50",
        "P95",
        "P99",
        "COST_USD"
    );
    for f in &r.functions {
        let kinds: Vec<String> = f
            .totals
            .failures
            .iter()
            .map(|k| format!("{}={}", k.kind, k.count))
            .collect();
        let _ = writeln!(
            out,
            "{:<20} {:<24} {:>7} {:>6} {:>6} {:>6} {:>6.1}% {:>7} {:>7} {:>7} {:>12.6}  {}",
            f.tool,
            f.function,
            f.totals.count,
            f.totals.ok,
            f.totals.error,
            f.totals.refused,
            f.totals.failure_rate * 100.0,
            ms(f.totals.latency_ms.p50),
            ms(f.totals.latency_ms.p95),
            ms(f.totals.latency_ms.p99),
            f.totals.cost_usd,
            kinds.join(" ")
        );
    }
    if !r.tasks.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<28} {:>11} {:>6} {:>8} {:>12} {:>12} {:>12}",
            "TASK", "INVOCATIONS", "CALLS", "FAILURES", "COST_USD", "IN_TOKENS", "OUT_TOKENS"
        );
        for task in &r.tasks {
            let (input, output) = task.ledger.as_ref().map_or(("-".into(), "-".into()), |l| {
                (l.input_tokens.to_string(), l.output_tokens.to_string())
            });
            let _ = writeln!(
                out,
                "{:<28} {:>11} {:>6} {:>8} {:>12.6} {:>12} {:>12}",
                task.task_id,
                task.invocations,
                task.calls,
                task.failures,
                task.cost_usd,
                input,
                output
            );
        }
        if r.task_count > r.tasks.len() as u64 {
            let _ = writeln!(out, "({} tasks; the most recent shown)", r.task_count);
        }
    }
    out
}
