//! The essay's reports: per tool and function the count, the failure rate
//! (by error kind), p50/p95/p99 wall time and the cost; per task the calls,
//! the cost and the model tokens ("per-step cost"); and a time series for
//! charts — always with the time range and the sample size they cover.
//!
//! They are computed from the persisted invocation records
//! ([`crate::storage::InvocationStore::invocation_samples`]) and the task
//! ledgers, so they survive restarts and cover every replica sharing the
//! store. The aggregation is pure ([`aggregate`], [`percentile`],
//! [`series`]); [`report`] reads the store and calls it. `GET /v1/stats`,
//! `host stats` and the console's stats page all call [`report`].
//!
//! Definitions (the README repeats them):
//! * **count**: invocations created in the range (every status).
//! * **failure rate**: `(error + refused) / (ok + error + refused)`;
//!   invocations still running or waiting for approval are not finished and
//!   count in neither part. Per kind: that kind's failures over the same
//!   denominator.
//! * **latency**: the invocation's wall time (`usage.wall_ms`), over the
//!   invocations that ran (`ok` or `error`; cache hits included); nearest
//!   rank percentiles.
//! * **cost**: the sum of what the invocations were charged
//!   (`charged.cost_micro_usd` in their records; refusals before admission
//!   cost nothing).
//! * **tasks**: per `task_id` in the range, the invocations, those that
//!   ran, failures and cost from the records; model tokens (reported by the
//!   orchestrator) and lifetime totals from the task's ledger, when the
//!   policy keeps one (it does when it sets a per-task limit).

use crate::error::{Error, ErrorKind, Result};
use crate::ids::TenantId;
use crate::storage::{InvocationSample, SampleFilter, Storage};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Most invocations one report reads: past it, the report covers the
/// newest ones and says so (`truncated`, `covered_since_ms`).
pub const MAX_SAMPLES: i64 = 100_000;

/// Most tasks one report lists (the most recently active first).
pub const MAX_TASKS: usize = 100;

/// Most tool/function rows one report lists (the busiest first).
pub const MAX_FUNCTIONS: usize = 500;

/// The default range: the last 24 hours.
pub const DEFAULT_RANGE_MS: i64 = 86_400_000;

/// Longest range one report may ask for: 366 days.
pub const MAX_RANGE_MS: i64 = 366 * 86_400_000;

/// Buckets in the time series.
pub const SERIES_BUCKETS: i64 = 24;

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub tool: Option<String>,
    pub function: Option<String>,
    pub workflow: Option<String>,
    /// Default: `until` minus 24 hours.
    pub since_ms: Option<i64>,
    /// Default: now.
    pub until_ms: Option<i64>,
}

/// A report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub tenant: String,
    /// The range asked for: `[since_ms, until_ms)`.
    pub range: Range,
    pub filter: Filter,
    /// Invocations the report counted.
    pub sample_size: u64,
    /// The range held more than [`MAX_SAMPLES`] matching invocations: the
    /// report covers the newest, from `covered_since_ms`.
    pub truncated: bool,
    pub covered_since_ms: i64,
    /// All functions together.
    pub totals: Totals,
    /// Per tool (all its functions), the busiest first.
    pub tools: Vec<ToolStats>,
    /// Per tool and function, the busiest first.
    pub functions: Vec<FunctionStats>,
    /// Per task, the most recently active first (at most [`MAX_TASKS`]).
    pub tasks: Vec<TaskStats>,
    /// Tasks seen in the range (the list may be shorter).
    pub task_count: u64,
    /// Invocations and failures over time.
    pub series: Series,
}

/// A time range, in Unix milliseconds and as RFC 3339 text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Range {
    pub since_ms: i64,
    pub until_ms: i64,
    pub since: String,
    pub until: String,
}

/// The filter a report was made with.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Filter {
    pub tool: Option<String>,
    pub function: Option<String>,
    pub workflow: Option<String>,
}

/// Counts, failures, latency and cost of a set of invocations.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Totals {
    pub count: u64,
    pub ok: u64,
    pub error: u64,
    pub refused: u64,
    /// Running or waiting for approval.
    pub unfinished: u64,
    /// `(error + refused) / (ok + error + refused)`; 0 when none finished.
    pub failure_rate: f64,
    /// Failures by error kind, the most frequent first.
    pub failures: Vec<KindCount>,
    pub latency_ms: Latency,
    pub cost_micro_usd: i64,
    pub cost_usd: f64,
}

/// Failures of one error kind.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindCount {
    pub kind: String,
    pub count: u64,
    /// `count` over the finished invocations.
    pub rate: f64,
}

/// Wall-time percentiles (nearest rank) over the invocations that ran.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Latency {
    /// How many ran (the percentiles' sample).
    pub samples: u64,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
    pub max: Option<i64>,
}

/// One tool function's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionStats {
    pub tool: String,
    pub function: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// One tool's figures (all its functions).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolStats {
    pub tool: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// One task's figures ("per-step cost").
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskStats {
    pub task_id: String,
    /// The workflow of its latest invocation.
    pub workflow: Option<String>,
    /// Invocations in the range.
    pub invocations: u64,
    /// Of those, the ones that ran (`ok` or `error`).
    pub calls: u64,
    /// Of those, `error` or `refused`.
    pub failures: u64,
    pub cost_micro_usd: i64,
    pub cost_usd: f64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// The task's ledger (lifetime, not the range), when the policy keeps
    /// one.
    pub ledger: Option<TaskLedger>,
}

/// A task's lifetime ledger totals.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct TaskLedger {
    pub tool_calls: i64,
    pub cost_micro_usd: i64,
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Invocations and failures per time bucket.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Series {
    pub bucket_ms: i64,
    pub buckets: Vec<Bucket>,
}

/// One bucket of the series: `[start_ms, start_ms + bucket_ms)`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub start_ms: i64,
    pub count: u64,
    pub failures: u64,
}

/// The `p`-th percentile (0 < p <= 100) of ascending `sorted` values, by
/// nearest rank: the smallest value with at least `p`% of the values at or
/// below it. `None` for no values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn usd(micro: i64) -> f64 {
    micro as f64 / 1e6
}

fn ran(s: &InvocationSample) -> bool {
    s.status == crate::storage::Status::Ok || s.status == crate::storage::Status::Error
}

fn failed(s: &InvocationSample) -> bool {
    s.status == crate::storage::Status::Error || s.status == crate::storage::Status::Refused
}

/// Totals of a set of samples.
pub fn totals<'a>(samples: impl IntoIterator<Item = &'a InvocationSample>) -> Totals {
    let mut t = Totals::default();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut walls = Vec::new();
    for s in samples {
        t.count += 1;
        match s.status.as_str() {
            "ok" => t.ok += 1,
            "error" => t.error += 1,
            "refused" => t.refused += 1,
            _ => t.unfinished += 1,
        }
        if failed(s) {
            let kind = s.error_kind.clone().unwrap_or_else(|| "unknown".into());
            *kinds.entry(kind).or_default() += 1;
        }
        if ran(s)
            && let Some(w) = s.wall_ms
        {
            walls.push(w);
        }
        t.cost_micro_usd = t
            .cost_micro_usd
            .saturating_add(s.cost_micro_usd.unwrap_or(0));
    }
    let finished = t.ok + t.error + t.refused;
    let rate = |n: u64| {
        if finished == 0 {
            0.0
        } else {
            n as f64 / finished as f64
        }
    };
    t.failure_rate = rate(t.error + t.refused);
    let mut failures: Vec<KindCount> = kinds
        .into_iter()
        .map(|(kind, count)| KindCount {
            kind,
            count,
            rate: rate(count),
        })
        .collect();
    failures.sort_by(|a, b| b.count.cmp(&a.count).then(a.kind.cmp(&b.kind)));
    t.failures = failures;
    walls.sort_unstable();
    t.latency_ms = Latency {
        samples: walls.len() as u64,
        p50: percentile(&walls, 50.0),
        p95: percentile(&walls, 95.0),
        p99: percentile(&walls, 99.0),
        max: walls.last().copied(),
    };
    t.cost_usd = usd(t.cost_micro_usd);
    t
}

/// Per tool and function, the busiest first (then by name), at most
/// [`MAX_FUNCTIONS`].
pub fn by_function(samples: &[InvocationSample]) -> Vec<FunctionStats> {
    let mut groups: HashMap<(&str, &str), Vec<&InvocationSample>> = HashMap::new();
    for s in samples {
        groups
            .entry((s.tool.as_str(), s.function.as_str()))
            .or_default()
            .push(s);
    }
    let mut out: Vec<FunctionStats> = groups
        .into_iter()
        .map(|((tool, function), group)| FunctionStats {
            tool: tool.to_string(),
            function: function.to_string(),
            totals: totals(group),
        })
        .collect();
    out.sort_by(|a, b| {
        b.totals
            .count
            .cmp(&a.totals.count)
            .then_with(|| (&a.tool, &a.function).cmp(&(&b.tool, &b.function)))
    });
    out.truncate(MAX_FUNCTIONS);
    out
}

/// Per tool, the busiest first (then by name), at most [`MAX_FUNCTIONS`].
pub fn by_tool(samples: &[InvocationSample]) -> Vec<ToolStats> {
    let mut groups: HashMap<&str, Vec<&InvocationSample>> = HashMap::new();
    for s in samples {
        groups.entry(s.tool.as_str()).or_default().push(s);
    }
    let mut out: Vec<ToolStats> = groups
        .into_iter()
        .map(|(tool, group)| ToolStats {
            tool: tool.to_string(),
            totals: totals(group),
        })
        .collect();
    out.sort_by(|a, b| {
        b.totals
            .count
            .cmp(&a.totals.count)
            .then_with(|| a.tool.cmp(&b.tool))
    });
    out.truncate(MAX_FUNCTIONS);
    out
}

/// Per task (samples with a `task_id`), the most recently active first;
/// all of them (the caller keeps the first [`MAX_TASKS`]). Ledgers are
/// not filled in.
pub fn by_task(samples: &[InvocationSample]) -> Vec<TaskStats> {
    let mut tasks: HashMap<&str, TaskStats> = HashMap::new();
    for s in samples {
        let Some(task) = s.task_id.as_deref() else {
            continue;
        };
        let t = tasks.entry(task).or_insert_with(|| TaskStats {
            task_id: task.to_string(),
            workflow: None,
            invocations: 0,
            calls: 0,
            failures: 0,
            cost_micro_usd: 0,
            cost_usd: 0.0,
            first_ms: s.created_ms,
            last_ms: s.created_ms,
            ledger: None,
        });
        t.invocations += 1;
        t.calls += u64::from(ran(s));
        t.failures += u64::from(failed(s));
        t.cost_micro_usd = t
            .cost_micro_usd
            .saturating_add(s.cost_micro_usd.unwrap_or(0));
        if s.created_ms >= t.last_ms {
            t.last_ms = s.created_ms;
            t.workflow = s.workflow.clone();
        }
        t.first_ms = t.first_ms.min(s.created_ms);
    }
    let mut out: Vec<TaskStats> = tasks
        .into_values()
        .map(|mut t| {
            t.cost_usd = usd(t.cost_micro_usd);
            t
        })
        .collect();
    out.sort_by(|a, b| {
        b.last_ms
            .cmp(&a.last_ms)
            .then_with(|| a.task_id.cmp(&b.task_id))
    });
    out
}

/// Invocations and failures in [`SERIES_BUCKETS`] equal buckets covering
/// `[since_ms, until_ms)` (the last one may end past `until_ms`).
pub fn series(samples: &[InvocationSample], since_ms: i64, until_ms: i64) -> Series {
    let span = (until_ms - since_ms).max(1);
    let bucket_ms = (span + SERIES_BUCKETS - 1) / SERIES_BUCKETS;
    let mut buckets: Vec<Bucket> = (0..SERIES_BUCKETS)
        .map(|i| Bucket {
            start_ms: since_ms + i * bucket_ms,
            count: 0,
            failures: 0,
        })
        .collect();
    for s in samples {
        if s.created_ms < since_ms || s.created_ms >= until_ms {
            continue;
        }
        let i = ((s.created_ms - since_ms) / bucket_ms) as usize;
        if let Some(b) = buckets.get_mut(i) {
            b.count += 1;
            b.failures += u64::from(failed(s));
        }
    }
    Series { bucket_ms, buckets }
}

/// A report over `samples` (newest first, as the store returns them) for
/// `[since_ms, until_ms)`, `truncated` when the store had more than it
/// returned. Task ledgers are not filled in.
pub fn aggregate(
    tenant: &TenantId,
    filter: Filter,
    since_ms: i64,
    until_ms: i64,
    samples: &[InvocationSample],
    truncated: bool,
) -> Report {
    let covered_since_ms = if truncated {
        samples.last().map_or(since_ms, |s| s.created_ms)
    } else {
        since_ms
    };
    let mut tasks = by_task(samples);
    let task_count = tasks.len() as u64;
    tasks.truncate(MAX_TASKS);
    Report {
        tenant: tenant.to_string(),
        range: Range {
            since_ms,
            until_ms,
            since: format_time(since_ms),
            until: format_time(until_ms),
        },
        filter,
        sample_size: samples.len() as u64,
        truncated,
        covered_since_ms,
        totals: totals(samples),
        tools: by_tool(samples),
        functions: by_function(samples),
        tasks,
        task_count,
        series: series(samples, since_ms, until_ms),
    }
}

/// The range a query asks for, checked: `until` defaults to `now_ms`,
/// `since` to 24 hours before `until`; `since < until`, at most
/// [`MAX_RANGE_MS`] apart.
pub fn range_of(query: &Query, now_ms: i64) -> Result<(i64, i64)> {
    let until = query.until_ms.unwrap_or(now_ms);
    let since = query
        .since_ms
        .unwrap_or_else(|| until.saturating_sub(DEFAULT_RANGE_MS));
    if since >= until {
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            format!(
                "`since` ({}) must be before `until` ({})",
                format_time(since),
                format_time(until)
            ),
        ));
    }
    if until - since > MAX_RANGE_MS {
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            "the range from `since` to `until` is longer than 366 days",
        ));
    }
    Ok((since, until))
}

/// The report for `tenant`: reads at most [`MAX_SAMPLES`] matching
/// invocations and the ledgers of the tasks it lists.
pub async fn report(
    storage: &dyn Storage,
    tenant: &TenantId,
    query: &Query,
    now_ms: i64,
) -> Result<Report> {
    let (since, until) = range_of(query, now_ms)?;
    let mut samples = storage
        .invocation_samples(
            tenant,
            SampleFilter {
                tool: query.tool.clone(),
                function: query.function.clone(),
                workflow: query.workflow.clone(),
                since_ms: since,
                until_ms: until,
                limit: MAX_SAMPLES + 1,
            },
        )
        .await?;
    let truncated = samples.len() as i64 > MAX_SAMPLES;
    samples.truncate(MAX_SAMPLES as usize);
    let filter = Filter {
        tool: query.tool.clone(),
        function: query.function.clone(),
        workflow: query.workflow.clone(),
    };
    let mut report = aggregate(tenant, filter, since, until, &samples, truncated);
    for task in &mut report.tasks {
        let lines = storage
            .budget_usage(&crate::ids::LedgerScope::task(tenant, &task.task_id))
            .await?;
        task.ledger = ledger_of(&lines);
    }
    Ok(report)
}

/// A task's lifetime totals from its ledger lines (window `all`), if it
/// has any.
pub fn ledger_of(lines: &[crate::storage::Usage]) -> Option<TaskLedger> {
    let mut ledger = TaskLedger::default();
    let mut any = false;
    for u in lines.iter().filter(|u| u.window.is_all()) {
        any = true;
        match u.metric.as_str() {
            "tool_calls" => ledger.tool_calls = u.used,
            "cost_micro_usd" => ledger.cost_micro_usd = u.used,
            "input_tokens" => ledger.input_tokens = u.used,
            "output_tokens" => ledger.output_tokens = u.used,
            _ => {}
        }
    }
    ledger.cost_usd = usd(ledger.cost_micro_usd);
    any.then_some(ledger)
}

/// Unix milliseconds as RFC 3339 UTC (`2026-11-26T10:00:00Z`, with
/// milliseconds when they are not zero).
pub fn format_time(ms: i64) -> String {
    let (y, m, d) = crate::budget::civil_date(ms);
    let in_day = ms.rem_euclid(86_400_000);
    let (h, min, s, frac) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    if frac == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{frac:03}Z")
    }
}

/// Unix milliseconds of a UTC calendar date and time.
fn unix_ms(y: i64, m: i64, d: i64, h: i64, min: i64, s: i64, ms: i64) -> i64 {
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400_000 + h * 3_600_000 + min * 60_000 + s * 1000 + ms
}

/// Parse a time for a report's range: Unix milliseconds (`1795651200000`),
/// an RFC 3339 UTC date or time (`2026-11-26`, `2026-11-26T10:00:00Z`,
/// `2026-11-26T10:00:00.250Z`), or a period before `now_ms` (`15m`,
/// `24h`, `7d`).
pub fn parse_time(s: &str, now_ms: i64) -> std::result::Result<i64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "`{s}` is not a time (use Unix milliseconds, 2026-11-26, 2026-11-26T10:00:00Z, or a period ago such as 24h or 7d)"
        )
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|_| bad());
    }
    if t.len() >= 10 && t.as_bytes()[4] == b'-' {
        let (date, time) = match t.split_once('T') {
            Some((d, rest)) => (d, Some(rest.strip_suffix('Z').ok_or_else(bad)?)),
            None => (t, None),
        };
        let num = |p: &str, len: usize| -> std::result::Result<i64, String> {
            if p.len() == len && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse().map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let parts: Vec<&str> = date.split('-').collect();
        let [y, m, d] = parts[..] else {
            return Err(bad());
        };
        let (y, m, d) = (num(y, 4)?, num(m, 2)?, num(d, 2)?);
        let (mut h, mut min, mut sec, mut ms) = (0, 0, 0, 0);
        if let Some(time) = time {
            let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
            let parts: Vec<&str> = hms.split(':').collect();
            let [hh, mm, ss] = parts[..] else {
                return Err(bad());
            };
            (h, min, sec) = (num(hh, 2)?, num(mm, 2)?, num(ss, 2)?);
            if !frac.is_empty() {
                if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let digits: String = frac.chars().chain("00".chars()).take(3).collect();
                ms = digits.parse().map_err(|_| bad())?;
            }
        }
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let days_in_month = match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if !(1..=12).contains(&m)
            || !(1..=days_in_month).contains(&d)
            || h > 23
            || min > 59
            || sec > 60
        {
            return Err(bad());
        }
        return Ok(unix_ms(y, m, d, h, min, sec, ms));
    }
    // A period past its bounds says so; anything else is not a time.
    let period = crate::limits::parse_period(t).map_err(|e| {
        if e.contains("must be") {
            format!("`{s}`: {e}")
        } else {
            bad()
        }
    })?;
    Ok(now_ms.saturating_sub(i64::try_from(period.as_millis()).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        tool: &str,
        status: &str,
        kind: Option<&str>,
        wall: i64,
        at: i64,
    ) -> InvocationSample {
        InvocationSample {
            tool: tool.into(),
            function: "f".into(),
            workflow: Some("w".into()),
            task_id: Some(format!("task-{}", at % 3)),
            status: crate::storage::Status::parse(status).unwrap(),
            error_kind: kind.map(str::to_string),
            created_ms: at,
            wall_ms: Some(wall),
            cost_micro_usd: Some(10),
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        // Two values: the median is the lower, p95 the upper.
        assert_eq!(percentile(&[1, 9], 50.0), Some(1));
        assert_eq!(percentile(&[1, 9], 95.0), Some(9));
        // Ten values: p95 and p99 are the largest.
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 95.0), Some(10));
        assert_eq!(percentile(&v, 50.0), Some(5));
    }

    #[test]
    fn totals_count_failures_by_kind_over_finished_calls_only() {
        let samples = vec![
            sample("a", "ok", None, 10, 1),
            sample("a", "ok", None, 30, 2),
            sample("a", "error", Some("fuel_exhausted"), 50, 3),
            sample("a", "refused", Some("policy_denied"), 0, 4),
            sample("a", "refused", Some("policy_denied"), 0, 5),
            sample("a", "pending_approval", Some("approval_required"), 0, 6),
            sample("a", "running", None, 0, 7),
        ];
        let t = totals(&samples);
        assert_eq!(
            (t.count, t.ok, t.error, t.refused, t.unfinished),
            (7, 2, 1, 2, 2)
        );
        assert!((t.failure_rate - 0.6).abs() < 1e-9, "{}", t.failure_rate);
        assert_eq!(t.failures[0].kind, "policy_denied");
        assert_eq!(t.failures[0].count, 2);
        assert!((t.failures[0].rate - 0.4).abs() < 1e-9);
        assert_eq!(t.failures[1].kind, "fuel_exhausted");
        // Latency over the three that ran, not the refusals' zeros.
        assert_eq!(t.latency_ms.samples, 3);
        assert_eq!(t.latency_ms.p50, Some(30));
        assert_eq!(t.latency_ms.p99, Some(50));
        assert_eq!(t.cost_micro_usd, 70);
        let empty = totals(&[]);
        assert_eq!(empty.failure_rate, 0.0);
        assert_eq!(empty.latency_ms.p95, None);
    }

    #[test]
    fn groups_by_function_and_task_and_buckets_in_time() {
        let mut samples: Vec<InvocationSample> = (0..30)
            .map(|i| sample(if i % 3 == 0 { "b" } else { "a" }, "ok", None, i, i * 100))
            .collect();
        samples.push(sample("a", "error", Some("trap"), 5, 2950));
        samples.reverse();
        assert_eq!(by_tool(&samples)[0].totals.count, 21);
        let f = by_function(&samples);
        assert_eq!((f[0].tool.as_str(), f[0].totals.count), ("a", 21));
        assert_eq!((f[1].tool.as_str(), f[1].totals.count), ("b", 10));
        let tasks = by_task(&samples);
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks.iter().map(|t| t.invocations).sum::<u64>(), 31);
        // The most recently active first.
        assert_eq!(tasks[0].task_id, "task-1", "{tasks:?}");
        assert_eq!(tasks[0].last_ms, 2950);
        let s = series(&samples, 0, 3000);
        assert_eq!(s.bucket_ms, 125);
        assert_eq!(s.buckets.len(), 24);
        assert_eq!(s.buckets.iter().map(|b| b.count).sum::<u64>(), 31);
        assert_eq!(s.buckets[23].failures, 1);
        let r = aggregate(&"acme".into(), Filter::default(), 0, 3000, &samples, true);
        assert_eq!(r.sample_size, 31);
        assert_eq!(r.covered_since_ms, 0);
        assert_eq!(r.range.since, "1970-01-01T00:00:00Z");
        assert_eq!(r.range.until, "1970-01-01T00:00:03Z");
    }

    #[test]
    fn times() {
        let now = 1_795_651_200_000; // 2026-11-26T00:00:00Z
        assert_eq!(parse_time("1795651200000", now), Ok(now));
        assert_eq!(parse_time("2026-11-26", now), Ok(now));
        assert_eq!(
            parse_time("2026-11-26T10:00:00Z", now),
            Ok(now + 36_000_000)
        );
        assert_eq!(
            parse_time("2026-11-26T10:00:00.25Z", now),
            Ok(now + 36_000_250)
        );
        assert_eq!(parse_time("24h", now), Ok(now - 86_400_000));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_time("48h", now), Ok(now - 2 * 86_400_000));
        assert!(
            parse_time("400d", now)
                .unwrap_err()
                .contains("at most 366d")
        );
        assert!(parse_time("2028-02-29", now).is_ok());
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-02-29",
            "2026-04-31",
            "2026-11-26T10:00",
            "2026-11-26T10:00:00+01:00",
            "-5",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
        assert_eq!(format_time(now), "2026-11-26T00:00:00Z");
        assert_eq!(format_time(now + 36_000_250), "2026-11-26T10:00:00.250Z");
        assert_eq!(parse_time(&format_time(now + 1234), now), Ok(now + 1234));
        assert!(
            range_of(
                &Query {
                    since_ms: Some(5),
                    until_ms: Some(5),
                    ..Query::default()
                },
                now
            )
            .is_err()
        );
        assert_eq!(
            range_of(&Query::default(), now).unwrap(),
            (now - DEFAULT_RANGE_MS, now)
        );
    }
}
