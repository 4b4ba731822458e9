//! `host run`: one invocation, under limits, through the gate.

use super::ComponentArgs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use toolhost::gate::{CallContext, SandboxOnly};
use toolhost::ids::TenantId;
use toolhost::limits::{parse_bytes, parse_duration};
use toolhost::service::{Answer, InvocationService, Keys, Request};
use toolhost::{Error, ErrorKind, Host, Limits};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    component: ComponentArgs,
    /// The function: its WIT name (`lookup-order`), `interface/function`
    /// (`crm/divide`), or a bare name when unambiguous. snake_case works too.
    function: String,
    /// Arguments: a JSON object keyed by parameter name; `@FILE` reads it
    /// from a file, `-` from stdin.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Fuel (deterministic CPU budget), or `unlimited`.
    #[arg(long, default_value_t = Limits::DEFAULT_FUEL.to_string())]
    fuel: String,
    /// Linear-memory cap, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB")]
    memory: String,
    /// Wall-clock deadline, e.g. `2s`, `500ms`.
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// Cap on the result's size as JSON, e.g. `1MiB`.
    #[arg(long, default_value = "1MiB")]
    max_output: String,
    /// Cap on captured stdout and on stderr, each, e.g. `64KiB`.
    #[arg(long, default_value = "64KiB")]
    max_stdio: String,
    /// Print one JSON object with the outcome, usage, stdout and stderr.
    #[arg(long)]
    json: bool,
    /// Run through the governed gate with this policy file: its decisions,
    /// grants, limits and budgets apply, and the invocation is audited in
    /// the data dir. Without it, nothing is granted and nothing recorded.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The tenant the call is made for.
    #[arg(long, value_parser = TenantId::parse)]
    tenant: Option<TenantId>,
    /// The workflow (default: the policy's only workflow).
    #[arg(long)]
    workflow: Option<String>,
    /// The task id, for per-task budgets.
    #[arg(long)]
    task: Option<String>,
    /// Secret values (a YAML/JSON map), for `{{secret:NAME}}` in the policy;
    /// `TOOLHOST_SECRET_<NAME>` environment variables work too.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Run at most once per key (needs --policy): a repeat with the same
    /// key and request prints the first answer; with another request it
    /// fails. Kept 24 h in the data dir.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Print the audit records this invocation produced (to stderr, or in
    /// the --json object as `audit`).
    #[arg(long)]
    audit: bool,
    #[command(flatten)]
    data: super::data::DataDir,
}

fn limits(args: &Args) -> Result<Limits, String> {
    let fuel = match args.fuel.as_str() {
        "unlimited" | "none" => None,
        n => Some(
            n.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("--fuel: `{n}` is not a number or `unlimited`"))?,
        ),
    };
    let memory_bytes = parse_bytes(&args.memory).map_err(|e| format!("--memory: {e}"))?;
    if memory_bytes > Limits::MAX_MEMORY {
        return Err(format!(
            "--memory: at most {} bytes (4GiB) is supported",
            Limits::MAX_MEMORY
        ));
    }
    let size = |s: &str, flag: &str| -> Result<usize, String> {
        parse_bytes(s)
            .map_err(|e| format!("{flag}: {e}"))
            .and_then(|n| usize::try_from(n).map_err(|_| format!("{flag}: too large")))
    };
    Ok(Limits {
        fuel,
        memory_bytes,
        timeout: parse_duration(&args.timeout).map_err(|e| format!("--timeout: {e}"))?,
        max_output_bytes: size(&args.max_output, "--max-output")?,
        max_stdio_bytes: size(&args.max_stdio, "--max-stdio")?,
        ..Limits::default()
    })
}

/// The most `--args` read from a file or stdin (`/dev/zero` must not fill
/// memory).
const MAX_ARGS: u64 = 64 << 20;

fn read_args(spec: &str) -> Result<serde_json::Value, String> {
    let capped = |from: &str, r: &mut dyn std::io::Read| -> Result<String, String> {
        let mut s = String::new();
        r.take(MAX_ARGS + 1)
            .read_to_string(&mut s)
            .map_err(|e| format!("--args: reading {from}: {e}"))?;
        if s.len() as u64 > MAX_ARGS {
            return Err(format!(
                "--args: {from} holds more than {} MiB of arguments",
                MAX_ARGS >> 20
            ));
        }
        Ok(s)
    };
    let text = if spec == "-" {
        capped("stdin", &mut std::io::stdin().lock())?
    } else if let Some(path) = spec.strip_prefix('@') {
        let mut f =
            std::fs::File::open(path).map_err(|e| format!("--args: reading {path}: {e}"))?;
        capped(path, &mut f)?
    } else {
        spec.to_string()
    };
    serde_json::from_str(&text).map_err(|e| format!("--args is not valid JSON: {e}"))
}

/// Answer a keyed run that already ran: its stored answer, nothing run.
fn replay(json: bool, response: &toolhost::invoke::InvocationResponse) -> i32 {
    eprintln!(
        "replayed: this idempotency key already ran as {}",
        response.invocation_id
    );
    if json {
        let mut v = serde_json::to_value(response).unwrap_or_default();
        v["ok"] = serde_json::json!(response.status == toolhost::invoke::Status::Ok);
        v["replayed"] = serde_json::json!(true);
        out!("{v}");
    } else if let Some(e) = &response.error {
        super::report(e);
    } else if let Some(r) = &response.result {
        out!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    }
    i32::from(response.status != toolhost::invoke::Status::Ok)
}

fn fail(json: bool, e: Error) -> i32 {
    if json {
        out!("{}", serde_json::json!({"ok": false, "error": e}));
    }
    super::report(&e);
    1
}

pub async fn main(args: Args) -> i32 {
    let limits = match limits(&args) {
        Ok(l) => l,
        Err(msg) => {
            eprintln!("error: {msg}");
            return 2;
        }
    };
    let call_args = match read_args(&args.args) {
        Ok(a) => a,
        Err(msg) => return fail(args.json, Error::new(ErrorKind::InvalidArgs, msg)),
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => return fail(args.json, e),
    };
    let tool = match runtime.load_file(&args.component.component, &args.component.load_options()) {
        Ok(t) => t,
        Err(e) => return fail(args.json, e),
    };
    if args.idempotency_key.is_some() && args.policy.is_none() {
        eprintln!("error: --idempotency-key needs --policy (keys are kept in the data dir)");
        return 2;
    }
    let context = CallContext {
        tenant: args.tenant.clone().unwrap_or_default(),
        workflow: args.workflow.clone(),
        task_id: args.task.clone(),
        principal: Some("cli".into()),
        idempotency_key: args.idempotency_key.clone(),
        approval: None,
        callback_url: None,
        transport: Some("cli".into()),
        traceparent: None,
    };
    let (host, audit, instance) = match &args.policy {
        None => (
            Host::new(runtime, Arc::new(SandboxOnly)),
            None,
            toolhost::lease::Instance::system(),
        ),
        Some(policy) => {
            match super::data::governed(&args.data, policy, args.secrets.as_deref()).await {
                Ok(gate) => {
                    let audit = gate.audit().clone();
                    let instance = gate.instance().clone();
                    (Host::new(runtime, Arc::new(gate)), Some(audit), instance)
                }
                Err(e) => return fail(args.json, e),
            }
        }
    };
    let chain = toolhost::audit::chain_of(args.tenant.as_deref());
    let head_before = match &audit {
        Some(a) if args.audit => a.storage().checkpoints(&chain).await.ok().and_then(|c| {
            c.into_iter()
                .filter(|c| c.kind == "tip")
                .map(|c| c.seq)
                .max()
        }),
        _ => None,
    };
    let service = Arc::new(InvocationService::new(
        Arc::new(host),
        audit.clone().map(|audit| Keys {
            audit,
            retention: toolhost::idempotency::DEFAULT_RETENTION,
        }),
        instance,
    ));
    // Leases renewed while this runs (a tool may run longer than a lease).
    let lifecycle = service.start_renewer();
    let request = Request {
        tool: Arc::new(tool),
        function: Some(args.function.clone()),
        args: call_args,
        limits,
        context,
        hold: None,
    };
    let outcome = match service.invoke(request).await {
        Err(e) => return fail(args.json, e),
        Ok(Answer::Replayed(response)) => return replay(args.json, &response),
        Ok(Answer::Done(outcome)) => outcome,
    };
    for task in lifecycle {
        task.abort();
    }
    let mut records = Vec::new();
    if let (Some(a), true) = (&audit, args.audit) {
        let entries = a
            .storage()
            .audit_read(&chain, head_before.unwrap_or(0), 100_000)
            .await
            .unwrap_or_default();
        for e in entries {
            if e.body.contains(outcome.invocation_id.as_str()) {
                records.push(serde_json::json!({
                    "chain": e.chain, "seq": e.seq, "hash": e.hash, "prev_hash": e.prev_hash,
                    "record": serde_json::from_str::<serde_json::Value>(&e.body).unwrap_or_default(),
                }));
            }
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&outcome).unwrap_or_default();
        if args.audit {
            v["audit"] = serde_json::Value::Array(records);
        }
        out!("{v}");
    } else {
        for r in &records {
            eprintln!("audit: {r}");
        }
        // The guest's own output goes to stderr: stdout is the result alone.
        eprint!("{}", outcome.stdout);
        if outcome.stdout_truncated {
            eprintln!("[guest stdout truncated]");
        }
        eprint!("{}", outcome.stderr);
        if outcome.stderr_truncated {
            eprintln!("[guest stderr truncated]");
        }
        for line in &outcome.logs {
            eprintln!("[{}] {}", line.level, line.message);
        }
        for event in outcome.outbound.iter().filter(|e| !e.allowed) {
            eprintln!("denied: {} ({})", event.call.describe(), event.rule);
        }
        match (&outcome.result, &outcome.error) {
            (_, Some(e)) => super::report(e),
            (Some(r), None) => out!("{}", serde_json::to_string_pretty(r).unwrap_or_default()),
            (None, None) => {}
        }
    }
    i32::from(!outcome.ok)
}
