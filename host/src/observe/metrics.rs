//! Prometheus metrics (`metrics` + `metrics-exporter-prometheus`): what is
//! recorded, under which names and labels, with bounded label cardinality.
//!
//! Every series is named `toolhost_…`. Labels that come from tenants' data
//! go through [`Labels`]: at most [`Bounds::tenants`] tenants are named
//! (later ones are `tenant="other"`), and per tenant at most
//! [`Bounds::names`] tool/function pairs, destination hosts and workflows
//! each (later ones are `other`). Outcome, error kind and decision labels
//! are closed sets. So the number of series is bounded by the bounds, not
//! by what tenants register or call; `toolhost_metric_labels_overflow_total`
//! counts the values folded into `other`.

use crate::error::ErrorKind;
use crate::ids::TenantId;
use crate::record::{InvocationResponse, Status, Usage};
use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The label value that stands for everything past a bound.
pub const OTHER: &str = "other";

/// Bounds on label values from tenants' data.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Tenants named in labels; later tenants are `other`.
    pub tenants: usize,
    /// Per tenant: distinct tool/function pairs, destination hosts and
    /// workflows (each); later ones are `other`.
    pub names: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            tenants: 100,
            names: 50,
        }
    }
}

/// The label values seen so far, per tenant, capped by [`Bounds`], with
/// the series handles of each label set: the hot path looks a handle up
/// by the values it has (no allocation, no registry lookup) once a label
/// set is known.
pub struct Labels {
    bounds: Bounds,
    tenants: Mutex<HashMap<String, Seen>>,
    /// The series of tenants past the bound (`tenant="other"`).
    other: OnceLock<Arc<ToolSeries>>,
    other_spend: OnceLock<Arc<SpendSeries>>,
}

#[derive(Default)]
struct Seen {
    /// Tool → its functions named, with their series.
    tools: HashMap<String, HashMap<String, Arc<ToolSeries>>>,
    /// Tool/function pairs named (the bound applies to pairs).
    pairs: usize,
    /// The series of pairs past the bound (`tool="other"`).
    other_tool: Option<Arc<ToolSeries>>,
    hosts: HashSet<String>,
    workflows: HashMap<String, Arc<SpendSeries>>,
    other_workflow: Option<Arc<SpendSeries>>,
}

impl Seen {
    /// The series of a pair, if it may be named (it is already, or there is
    /// room: then it is added). No allocation when it is known.
    fn pair(
        &mut self,
        tenant: &str,
        tool: &str,
        function: &str,
        cap: usize,
    ) -> Option<Arc<ToolSeries>> {
        if let Some(s) = self.tools.get(tool).and_then(|f| f.get(function)) {
            return Some(s.clone());
        }
        if self.pairs >= cap {
            return None;
        }
        self.pairs += 1;
        let series = Arc::new(ToolSeries::new(tenant, tool, function));
        self.tools
            .entry(tool.to_string())
            .or_default()
            .insert(function.to_string(), series.clone());
        Some(series)
    }

    /// The spend series of a workflow, if it may be named.
    fn workflow(&mut self, tenant: &str, workflow: &str, cap: usize) -> Option<Arc<SpendSeries>> {
        if let Some(s) = self.workflows.get(workflow) {
            return Some(s.clone());
        }
        if self.workflows.len() >= cap {
            return None;
        }
        let series = Arc::new(SpendSeries::new(tenant, workflow));
        self.workflows.insert(workflow.to_string(), series.clone());
        Some(series)
    }
}

/// The series of one (tenant, tool, function) label set, each registered
/// the first time it is recorded (a series never recorded is not shown).
pub struct ToolSeries {
    labels: [(&'static str, String); 3],
    duration: OnceLock<Histogram>,
    sandbox: OnceLock<Histogram>,
    fuel: OnceLock<Histogram>,
    memory: OnceLock<Histogram>,
    cache_hits: OnceLock<Counter>,
    /// `toolhost_invocations_total` per (outcome, kind): a closed set.
    outcomes: Mutex<Vec<(&'static str, &'static str, Counter)>>,
}

impl ToolSeries {
    fn new(tenant: &str, tool: &str, function: &str) -> ToolSeries {
        ToolSeries {
            labels: [
                ("tenant", tenant.to_string()),
                ("tool", tool.to_string()),
                ("function", function.to_string()),
            ],
            duration: OnceLock::new(),
            sandbox: OnceLock::new(),
            fuel: OnceLock::new(),
            memory: OnceLock::new(),
            cache_hits: OnceLock::new(),
            outcomes: Mutex::new(Vec::new()),
        }
    }

    fn histogram(&self, cell: &OnceLock<Histogram>, name: &'static str) -> Histogram {
        cell.get_or_init(|| histogram!(name, &self.labels)).clone()
    }

    fn outcome(&self, outcome: &'static str, kind: &'static str) -> Counter {
        let mut known = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c)) = known.iter().find(|(o, k, _)| *o == outcome && *k == kind) {
            return c.clone();
        }
        let [(_, tenant), (_, tool), (_, function)] = &self.labels;
        let c = counter!(
            "toolhost_invocations_total",
            "tenant" => tenant.clone(),
            "tool" => tool.clone(),
            "function" => function.clone(),
            "outcome" => outcome,
            "kind" => kind,
        );
        known.push((outcome, kind, c.clone()));
        c
    }
}

/// The budget-spend series of one (tenant, workflow) label set.
pub struct SpendSeries {
    labels: [(&'static str, String); 2],
    calls: Counter,
    outbound: Counter,
    micro_usd: Counter,
    /// Reported model tokens, input and output (registered when reported).
    tokens: [OnceLock<Counter>; 2],
}

impl SpendSeries {
    fn new(tenant: &str, workflow: &str) -> SpendSeries {
        let labels = [
            ("tenant", tenant.to_string()),
            ("workflow", workflow.to_string()),
        ];
        SpendSeries {
            calls: counter!("toolhost_budget_tool_calls_total", &labels),
            outbound: counter!("toolhost_budget_outbound_calls_total", &labels),
            micro_usd: counter!("toolhost_budget_cost_micro_usd_total", &labels),
            tokens: [OnceLock::new(), OnceLock::new()],
            labels,
        }
    }
}

/// Whether `value` may be a label value of a set bounded at `cap` (it is
/// one already, or there is room: then it is added).
fn admit(set: &mut HashSet<String>, value: &str, cap: usize) -> bool {
    if set.contains(value) {
        return true;
    }
    if set.len() >= cap {
        return false;
    }
    set.insert(value.to_string());
    true
}

fn overflow(label: &'static str) {
    counter!("toolhost_metric_labels_overflow_total", "label" => label).increment(1);
}

impl Labels {
    pub fn new(bounds: Bounds) -> Labels {
        Labels {
            bounds,
            tenants: Mutex::new(HashMap::new()),
            other: OnceLock::new(),
            other_spend: OnceLock::new(),
        }
    }

    /// The series of (tenant, tool, function) as bounded labels.
    fn series(&self, tenant: &str, tool: &str, function: &str) -> Arc<ToolSeries> {
        let cap = self.bounds.names;
        let named = self.with(tenant, |s| match s.pair(tenant, tool, function, cap) {
            Some(series) => Ok(series),
            None => Err(s
                .other_tool
                .get_or_insert_with(|| Arc::new(ToolSeries::new(tenant, OTHER, OTHER)))
                .clone()),
        });
        match named {
            Some(Ok(series)) => series,
            Some(Err(folded)) => {
                overflow("tool");
                folded
            }
            None => self
                .other
                .get_or_init(|| Arc::new(ToolSeries::new(OTHER, OTHER, OTHER)))
                .clone(),
        }
    }

    /// The spend series of (tenant, workflow) as bounded labels.
    fn spend(&self, tenant: &str, workflow: &str) -> Arc<SpendSeries> {
        let cap = self.bounds.names;
        let named = self.with(tenant, |s| match s.workflow(tenant, workflow, cap) {
            Some(series) => Ok(series),
            None => Err(s
                .other_workflow
                .get_or_insert_with(|| Arc::new(SpendSeries::new(tenant, OTHER)))
                .clone()),
        });
        match named {
            Some(Ok(series)) => series,
            Some(Err(folded)) => {
                overflow("workflow");
                folded
            }
            None => self
                .other_spend
                .get_or_init(|| Arc::new(SpendSeries::new(OTHER, OTHER)))
                .clone(),
        }
    }

    /// `f` over the tenant's seen values, or `None` when the tenant is past
    /// the tenant bound (its labels are all `other`).
    fn with<R>(&self, tenant: &str, f: impl FnOnce(&mut Seen) -> R) -> Option<R> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if !tenants.contains_key(tenant) {
            if tenants.len() >= self.bounds.tenants {
                overflow("tenant");
                return None;
            }
            tenants.insert(tenant.to_string(), Seen::default());
        }
        tenants.get_mut(tenant).map(f)
    }

    /// (tenant, destination host) as labels.
    pub fn host(&self, tenant: &str, host: &str) -> [String; 2] {
        let cap = self.bounds.names;
        match self.with(tenant, |s| admit(&mut s.hosts, host, cap)) {
            Some(true) => [tenant.into(), host.into()],
            Some(false) => {
                overflow("host");
                [tenant.into(), OTHER.into()]
            }
            None => [OTHER.into(), OTHER.into()],
        }
    }

    /// The tenant as a label (for series labelled by tenant alone).
    pub fn tenant(&self, tenant: &str) -> String {
        match self.with(tenant, |_| ()) {
            Some(()) => tenant.into(),
            None => OTHER.into(),
        }
    }
}

/// Histogram buckets per series.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const FUEL: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];
const BYTES: &[f64] = &[
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];
const DECISION_SECONDS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 604800.0,
];
const COMPILE_SECONDS: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The metrics of this process: label bounds and the exposition handle.
pub struct Metrics {
    labels: Labels,
    handle: PrometheusHandle,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// A recorder with Toolhost's histogram buckets, and its metrics.
pub fn build(bounds: Bounds) -> (Metrics, PrometheusRecorder) {
    let buckets = |b: PrometheusBuilder, name: &str, values: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_string()), values)
            .expect("non-empty bucket list")
    };
    let mut b = PrometheusBuilder::new();
    for name in [
        "toolhost_invocation_duration_seconds",
        "toolhost_sandbox_duration_seconds",
        "toolhost_audit_commit_duration_seconds",
    ] {
        b = buckets(b, name, SECONDS);
    }
    b = buckets(b, "toolhost_invocation_fuel", FUEL);
    b = buckets(b, "toolhost_invocation_memory_peak_bytes", BYTES);
    b = buckets(b, "toolhost_approval_decision_seconds", DECISION_SECONDS);
    b = buckets(b, "toolhost_tool_load_duration_seconds", COMPILE_SECONDS);
    b = buckets(b, "toolhost_compile_duration_seconds", COMPILE_SECONDS);
    let recorder = b.build_recorder();
    let metrics = Metrics {
        labels: Labels::new(bounds),
        handle: recorder.handle(),
    };
    (metrics, recorder)
}

/// Turn metrics on for this process (once; later calls change nothing).
pub fn install(bounds: Bounds) {
    if METRICS.get().is_some() {
        return;
    }
    let (metrics, recorder) = build(bounds);
    if ::metrics::set_global_recorder(recorder).is_ok() {
        let _ = METRICS.set(metrics);
        describe();
    }
}

/// The exposition text (Prometheus 0.0.4), if metrics are on.
pub fn render() -> Option<String> {
    METRICS.get().map(|m| m.handle.render())
}

/// Drain histogram samples into their buckets (call every few seconds:
/// without scrapes, samples would otherwise pile up).
pub fn upkeep() {
    if let Some(m) = METRICS.get() {
        m.handle.run_upkeep();
    }
}

/// Whether metrics are on.
pub fn enabled() -> bool {
    METRICS.get().is_some()
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "toolhost_invocations_total",
        "Invocations by tenant, tool, function, outcome and error kind"
    );
    describe_histogram!(
        "toolhost_invocation_duration_seconds",
        Unit::Seconds,
        "End-to-end invocation time in the service (admission, sandbox, recording)"
    );
    describe_histogram!(
        "toolhost_sandbox_duration_seconds",
        Unit::Seconds,
        "Time inside the sandbox (invocations that ran)"
    );
    describe_histogram!(
        "toolhost_invocation_fuel",
        "Fuel an invocation consumed (invocations that ran)"
    );
    describe_histogram!(
        "toolhost_invocation_memory_peak_bytes",
        Unit::Bytes,
        "Peak linear memory of an invocation (invocations that ran)"
    );
    describe_counter!(
        "toolhost_cache_hits_total",
        "Invocations answered from the result cache"
    );
    describe_counter!(
        "toolhost_outbound_calls_total",
        "Outbound calls tools attempted, by destination host and the gate's decision"
    );
    describe_counter!(
        "toolhost_budget_tool_calls_total",
        "Tool calls charged to budgets, by tenant and workflow"
    );
    describe_counter!(
        "toolhost_budget_outbound_calls_total",
        "Outbound calls charged to budgets, by tenant and workflow"
    );
    describe_counter!(
        "toolhost_budget_cost_micro_usd_total",
        "Cost charged to budgets in micro-USD, by tenant and workflow"
    );
    describe_counter!(
        "toolhost_budget_tokens_total",
        "Model tokens reported against budgets, by tenant, workflow and direction"
    );
    describe_gauge!(
        "toolhost_approvals_pending",
        "Approval requests waiting for a decision (from the store, refreshed at most every 10 s)"
    );
    describe_histogram!(
        "toolhost_approval_decision_seconds",
        Unit::Seconds,
        "Time from an approval request to its decision"
    );
    describe_histogram!(
        "toolhost_audit_commit_duration_seconds",
        Unit::Seconds,
        "Time a unit of work waited for its durable audit commit"
    );
    describe_gauge!(
        "toolhost_requests_queued",
        "API requests waiting for a slot"
    );
    describe_gauge!("toolhost_requests_running", "API requests holding a slot");
    describe_counter!(
        "toolhost_requests_rejected_total",
        "API requests refused by admission control (429 tenant share, 503 overloaded, 504 deadline)"
    );
    describe_histogram!(
        "toolhost_tool_load_duration_seconds",
        Unit::Seconds,
        "Loading a tool version into memory (from this node's artifact, or compiling first)"
    );
    describe_histogram!(
        "toolhost_compile_duration_seconds",
        Unit::Seconds,
        "Compiling a component (uploads, and tools this node had not compiled)"
    );
    describe_counter!(
        "toolhost_metric_labels_overflow_total",
        "Label values reported as `other` because their bound was reached"
    );
}

/// What the metrics read of one invocation's answer.
pub struct Invocation<'a> {
    pub tool: &'a str,
    pub function: &'a str,
    pub status: Status,
    pub kind: Option<ErrorKind>,
    pub cached: bool,
    pub usage: &'a Usage,
}

impl<'a> Invocation<'a> {
    /// The figures of a response.
    pub fn of(response: &'a InvocationResponse) -> Invocation<'a> {
        Invocation {
            tool: &response.tool,
            function: &response.function,
            status: response.status,
            kind: response.error.as_ref().map(|e| e.kind),
            cached: response.cached,
            usage: &response.usage,
        }
    }
}

impl Metrics {
    /// The label bounds in use.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// One invocation's answer, `elapsed` end to end.
    pub fn invocation(&self, tenant: &str, i: &Invocation<'_>, elapsed: Duration) {
        let series = self.labels.series(tenant, i.tool, i.function);
        series
            .outcome(i.status.as_str(), i.kind.map_or("none", ErrorKind::as_str))
            .increment(1);
        series
            .histogram(&series.duration, "toolhost_invocation_duration_seconds")
            .record(elapsed.as_secs_f64());
        if i.cached {
            series
                .cache_hits
                .get_or_init(|| counter!("toolhost_cache_hits_total", &series.labels))
                .increment(1);
        }
        if matches!(i.status, Status::Ok | Status::Error) && !i.cached {
            let usage = i.usage;
            series
                .histogram(&series.sandbox, "toolhost_sandbox_duration_seconds")
                .record(usage.wall_ms as f64 / 1000.0);
            series
                .histogram(&series.fuel, "toolhost_invocation_fuel")
                .record(usage.fuel as f64);
            series
                .histogram(&series.memory, "toolhost_invocation_memory_peak_bytes")
                .record(usage.memory_peak_bytes as f64);
        }
    }

    /// An idempotent replay (nothing ran).
    pub fn replay(&self, tenant: &str, response: &InvocationResponse) {
        self.labels
            .series(tenant, &response.tool, &response.function)
            .outcome("replayed", "none")
            .increment(1);
    }

    /// An outbound call and the gate's final decision on it.
    pub fn outbound(&self, tenant: &str, host: &str, allowed: bool) {
        let [tenant, host] = self.labels.host(tenant, host);
        let decision = if allowed { "allow" } else { "deny" };
        counter!(
            "toolhost_outbound_calls_total",
            "tenant" => tenant,
            "host" => host,
            "decision" => decision,
        )
        .increment(1);
    }

    /// What an invocation was charged.
    pub fn spend(&self, tenant: &str, workflow: &str, calls: i64, outbound: i64, micro_usd: i64) {
        let series = self.labels.spend(tenant, workflow);
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        series.calls.increment(n(calls));
        series.outbound.increment(n(outbound));
        series.micro_usd.increment(n(micro_usd));
    }

    /// Model tokens a task reported.
    pub fn tokens(&self, tenant: &str, workflow: &str, input: i64, output: i64) {
        let series = self.labels.spend(tenant, workflow);
        for (i, (direction, n)) in [("input", input), ("output", output)]
            .into_iter()
            .enumerate()
        {
            let [(_, tenant), (_, workflow)] = &series.labels;
            series.tokens[i]
                .get_or_init(|| {
                    counter!(
                        "toolhost_budget_tokens_total",
                        "tenant" => tenant.clone(),
                        "workflow" => workflow.clone(),
                        "direction" => direction,
                    )
                })
                .increment(u64::try_from(n).unwrap_or(0));
        }
    }

    /// A tenant's pending approval requests now.
    pub fn approvals_pending(&self, tenant: &str, n: usize) {
        let tenant = self.labels.tenant(tenant);
        gauge!("toolhost_approvals_pending", "tenant" => tenant).set(n as f64);
    }

    /// An approval decided after `waited`.
    pub fn approval_decided(&self, tenant: &str, decision: &'static str, waited: Duration) {
        let tenant = self.labels.tenant(tenant);
        histogram!("toolhost_approval_decision_seconds", "tenant" => tenant, "decision" => decision)
            .record(waited.as_secs_f64());
    }
}

/// Run `f` with the installed metrics, if any.
fn with(f: impl FnOnce(&Metrics)) {
    if let Some(m) = METRICS.get() {
        f(m)
    }
}

/// One invocation's answer (see [`Metrics::invocation`]).
pub fn invocation(tenant: &TenantId, invocation: &Invocation<'_>, elapsed: Duration) {
    with(|m| m.invocation(tenant, invocation, elapsed));
}

/// An idempotent replay.
pub fn replay(tenant: &TenantId, response: &InvocationResponse) {
    with(|m| m.replay(tenant, response));
}

/// An outbound call and its decision.
pub fn outbound(tenant: &TenantId, host: &str, allowed: bool) {
    with(|m| m.outbound(tenant, host, allowed));
}

/// What an invocation was charged.
pub fn spend(tenant: &str, workflow: &str, calls: i64, outbound: i64, micro_usd: i64) {
    with(|m| m.spend(tenant, workflow, calls, outbound, micro_usd));
}

/// Model tokens a task reported.
pub fn tokens(tenant: &str, workflow: &str, input: i64, output: i64) {
    with(|m| m.tokens(tenant, workflow, input, output));
}

/// A tenant's pending approval requests now.
pub fn approvals_pending(tenant: &str, n: usize) {
    with(|m| m.approvals_pending(tenant, n));
}

/// An approval decided (`approved` / `denied`) after `waited`.
pub fn approval_decided(tenant: &str, decision: &'static str, waited: Duration) {
    with(|m| m.approval_decided(tenant, decision, waited));
}

/// A unit of work's wait for its durable audit commit.
pub fn audit_commit(elapsed: Duration, ok: bool) {
    with(|_| {
        let outcome = if ok { "ok" } else { "error" };
        histogram!("toolhost_audit_commit_duration_seconds", "outcome" => outcome)
            .record(elapsed.as_secs_f64());
    });
}

/// API requests running and queued now.
pub fn slots(running: usize, queued: usize) {
    with(|_| {
        gauge!("toolhost_requests_running").set(running as f64);
        gauge!("toolhost_requests_queued").set(queued as f64);
    });
}

/// An API request refused by admission control: `status` 429, 503 or 504.
pub fn rejected(status: u16, reason: &'static str) {
    with(|_| {
        let status = match status {
            429 => "429",
            503 => "503",
            504 => "504",
            _ => "other",
        };
        counter!("toolhost_requests_rejected_total", "status" => status, "reason" => reason)
            .increment(1);
    });
}

/// A tool version loaded: `source` is `artifact` (this node had compiled
/// it), `compiled` (compiled first) or `error`.
pub fn tool_loaded(elapsed: Duration, source: &'static str) {
    with(|_| {
        histogram!("toolhost_tool_load_duration_seconds", "source" => source)
            .record(elapsed.as_secs_f64());
    });
}

/// A component compiled (`ok`) or refused.
pub fn compiled(elapsed: Duration, ok: bool) {
    with(|_| {
        let outcome = if ok { "ok" } else { "error" };
        histogram!("toolhost_compile_duration_seconds", "outcome" => outcome)
            .record(elapsed.as_secs_f64());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(tool: &str, function: &str) -> InvocationResponse {
        InvocationResponse {
            invocation_id: "inv_1".into(),
            status: Status::Ok,
            tool: tool.into(),
            function: function.into(),
            version: Some("1".into()),
            result: None,
            error: None,
            usage: Usage {
                fuel: 1000,
                wall_ms: 2,
                memory_peak_bytes: 65536,
            },
            approval_id: None,
            cached: false,
        }
    }

    /// Lines of one metric family (samples, not comments).
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .collect()
    }

    #[test]
    fn a_tenant_with_thousands_of_tools_and_hosts_stays_within_the_bound() {
        let bounds = Bounds {
            tenants: 3,
            names: 10,
        };
        let (m, recorder) = build(bounds);
        ::metrics::with_local_recorder(&recorder, || {
            for i in 0..5000 {
                let r = response(&format!("tool-{i}"), "f");
                m.invocation("big", &Invocation::of(&r), Duration::from_millis(3));
                m.outbound("big", &format!("h{i}.example.com"), i % 2 == 0);
                m.spend("big", &format!("wf-{i}"), 1, 0, 10);
            }
            for t in 0..50 {
                m.invocation(
                    &format!("tenant-{t}"),
                    &Invocation::of(&response("t", "f")),
                    Duration::ZERO,
                );
            }
        });
        let text = recorder.handle().render();
        let invocations = samples(&text, "toolhost_invocations_total");
        // 10 named pairs + `other` for `big`; 2 more tenants named; one
        // `other` tenant for the remaining 48.
        assert_eq!(invocations.len(), 10 + 1 + 2 + 1, "{invocations:#?}");
        assert!(
            invocations.iter().any(
                |l| l.contains(r#"tenant="big",tool="other",function="other""#)
                    && l.ends_with(" 4990")
            ),
            "{invocations:#?}"
        );
        assert!(
            invocations
                .iter()
                .any(|l| l.contains(r#"tenant="other",tool="other""#) && l.ends_with(" 48")),
            "{invocations:#?}"
        );
        // Histograms: one series set per label set, not per tool.
        let counts = samples(&text, "toolhost_invocation_duration_seconds_count");
        assert_eq!(counts.len(), 14, "{counts:#?}");
        // Hosts: 10 named (each one decision) + other with both decisions.
        let outbound = samples(&text, "toolhost_outbound_calls_total");
        assert_eq!(outbound.len(), 12, "{outbound:#?}");
        let workflows = samples(&text, "toolhost_budget_tool_calls_total");
        assert_eq!(workflows.len(), 11, "{workflows:#?}");
        let overflow = samples(&text, "toolhost_metric_labels_overflow_total");
        assert!(
            overflow
                .iter()
                .any(|l| l.contains(r#"label="tool""#) && l.ends_with(" 4990")),
            "{overflow:#?}"
        );
        // The bound holds in memory too: the tenant remembers `names`
        // values per kind, not 5000.
        let tenants = m.labels.tenants.lock().unwrap();
        assert_eq!(tenants.len(), 3);
        assert_eq!(tenants["big"].pairs, 10);
        assert_eq!(tenants["big"].tools.len(), 10);
        assert_eq!(tenants["big"].hosts.len(), 10);
    }

    #[test]
    fn refusals_and_cache_hits_record_no_sandbox_figures() {
        let (m, recorder) = build(Bounds::default());
        ::metrics::with_local_recorder(&recorder, || {
            let mut refused = response("t", "f");
            refused.status = Status::Refused;
            refused.error = Some(crate::Error::new(
                crate::ErrorKind::PolicyDenied,
                "denied by r",
            ));
            refused.usage = Usage::default();
            m.invocation("a", &Invocation::of(&refused), Duration::from_millis(1));
            let mut hit = response("t", "f");
            hit.cached = true;
            m.invocation("a", &Invocation::of(&hit), Duration::from_millis(1));
        });
        let text = recorder.handle().render();
        assert!(
            text.contains(r#"toolhost_invocations_total{tenant="a",tool="t",function="f",outcome="refused",kind="policy_denied"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"toolhost_cache_hits_total{tenant="a",tool="t",function="f"} 1"#),
            "{text}"
        );
        assert!(samples(&text, "toolhost_sandbox_duration_seconds_count").is_empty());
        assert_eq!(
            samples(&text, "toolhost_invocation_duration_seconds_count"),
            vec![
                r#"toolhost_invocation_duration_seconds_count{tenant="a",tool="t",function="f"} 2"#
            ]
        );
    }
}
