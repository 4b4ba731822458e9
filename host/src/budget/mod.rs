//! Budgets: ledgers per task, per workflow and per tenant (day and month
//! windows, UTC), reserve-then-settle so concurrent invocations never
//! overspend.
//!
//! An invocation reserves its worst case before it runs — one tool call, its
//! fuel limit, its timeout, its outbound-call limit and the cost of all of
//! those — and settles to what it actually used when it is over, in the same
//! transaction as its audit record ([`crate::audit::AuditLog::commit`]).
//! Model tokens are reported by the orchestrator ([`Ledger::report_tokens`]);
//! a task over its token budget may run no further tools.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{LedgerScope, TenantId, Window};
use crate::policy::file::{Budget, Limits, Price};
use crate::storage::{Charge, Exceeded, Storage};
use serde::Serialize;
use std::sync::Arc;

/// What an invocation may spend (reserved) or did spend (settled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Spend {
    pub tool_calls: i64,
    pub outbound_calls: i64,
    pub fuel: i64,
    pub wall_ms: i64,
    pub cost_micro_usd: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl Spend {
    /// The cost of an invocation at `price`, in micro-USD (rounded up).
    pub fn priced(mut self, price: &Price) -> Spend {
        let usd = price.per_call_usd * self.tool_calls as f64
            + price.per_million_fuel_usd * self.fuel as f64 / 1e6
            + price.per_outbound_call_usd * self.outbound_calls as f64;
        self.cost_micro_usd = micro_usd(usd);
        self
    }

    fn metrics(&self) -> [(Metric, i64); 7] {
        [
            (Metric::ToolCalls, self.tool_calls),
            (Metric::OutboundCalls, self.outbound_calls),
            (Metric::Fuel, self.fuel),
            (Metric::WallMs, self.wall_ms),
            (Metric::CostMicroUsd, self.cost_micro_usd),
            (Metric::InputTokens, self.input_tokens),
            (Metric::OutputTokens, self.output_tokens),
        ]
    }
}

/// What a ledger line counts. Stored and shown by its snake_case name
/// (`tool_calls`, `cost_micro_usd`, ...).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ToolCalls,
    OutboundCalls,
    Fuel,
    WallMs,
    /// USD in micro-USD.
    CostMicroUsd,
    InputTokens,
    OutputTokens,
}

impl Metric {
    /// Every metric, in the order [`Spend`] lists them.
    pub const ALL: [Metric; 7] = [
        Metric::ToolCalls,
        Metric::OutboundCalls,
        Metric::Fuel,
        Metric::WallMs,
        Metric::CostMicroUsd,
        Metric::InputTokens,
        Metric::OutputTokens,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::ToolCalls => "tool_calls",
            Metric::OutboundCalls => "outbound_calls",
            Metric::Fuel => "fuel",
            Metric::WallMs => "wall_ms",
            Metric::CostMicroUsd => "cost_micro_usd",
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
        }
    }

    /// The metric a stored name means (`None`: no metric has that name).
    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The policy name of its limit (`max_tool_calls`, `max_cost_usd`, ...).
    pub fn limit_name(self) -> &'static str {
        match self {
            Metric::ToolCalls => "max_tool_calls",
            Metric::OutboundCalls => "max_outbound_calls",
            Metric::Fuel => "max_fuel",
            Metric::WallMs => "max_wall_ms",
            Metric::CostMicroUsd => "max_cost_usd",
            Metric::InputTokens => "max_input_tokens",
            Metric::OutputTokens => "max_output_tokens",
        }
    }

    /// Model tokens (reported by the orchestrator, not measured here).
    pub fn is_tokens(self) -> bool {
        matches!(self, Metric::InputTokens | Metric::OutputTokens)
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// USD in micro-USD, rounded up.
pub fn micro_usd(usd: f64) -> i64 {
    (usd * 1e6).ceil().min(i64::MAX as f64) as i64
}

/// The limit `limits` sets on a ledger metric, in the ledger's unit
/// (`cost_micro_usd` in micro-USD).
pub fn limit_of(limits: &Limits, metric: Metric) -> Option<i64> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    match metric {
        Metric::ToolCalls => limits.max_tool_calls.map(clamp),
        Metric::OutboundCalls => limits.max_outbound_calls.map(clamp),
        Metric::Fuel => limits.max_fuel.map(clamp),
        Metric::WallMs => limits.max_wall_ms.map(clamp),
        Metric::CostMicroUsd => limits.max_cost_usd.map(|u| (u * 1e6).floor() as i64),
        Metric::InputTokens => limits.max_input_tokens.map(clamp),
        Metric::OutputTokens => limits.max_output_tokens.map(clamp),
    }
}

/// Whose ledgers an invocation is charged to.
#[derive(Debug, Clone)]
pub struct Scope {
    pub tenant: TenantId,
    pub workflow: String,
    pub task: Option<String>,
}

impl LedgerScope {
    /// The ledger of a tenant's task.
    pub fn task(tenant: &str, task: &str) -> LedgerScope {
        format!("task:{tenant}/{task}").into()
    }

    /// The ledger of a tenant's workflow.
    pub fn workflow(tenant: &str, workflow: &str) -> LedgerScope {
        format!("workflow:{tenant}/{workflow}").into()
    }

    /// The ledger of a whole tenant.
    pub fn tenant(tenant: &str) -> LedgerScope {
        format!("tenant:{tenant}").into()
    }
}

impl Window {
    /// The whole life of the ledger (tasks).
    pub fn all() -> Window {
        "all".into()
    }

    /// The UTC day `unix_ms` falls in.
    pub fn day(unix_ms: i64) -> Window {
        let (y, m, d) = civil_date(unix_ms);
        format!("day:{y:04}-{m:02}-{d:02}").into()
    }

    /// The UTC month `unix_ms` falls in.
    pub fn month(unix_ms: i64) -> Window {
        let (y, m, _) = civil_date(unix_ms);
        format!("month:{y:04}-{m:02}").into()
    }

    /// Whether it is the whole life of the ledger.
    pub fn is_all(&self) -> bool {
        self.as_str() == "all"
    }
}

/// A UTC calendar date from Unix milliseconds: (year, month, day).
pub fn civil_date(unix_ms: i64) -> (i64, u32, u32) {
    // Howard Hinnant's civil_from_days.
    let z = unix_ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The ledgers (scope, window) a call in `scope` at `now_ms` is charged
/// to, with their limits: the task's (`all`), the workflow's and the
/// tenant's (the current `day:` and `month:` windows) where the budget sets
/// limits.
pub fn levels(budget: &Budget, scope: &Scope, now_ms: i64) -> Vec<(LedgerScope, Window, Limits)> {
    let (day, month) = (Window::day(now_ms), Window::month(now_ms));
    let mut levels: Vec<(LedgerScope, Window, Limits)> = Vec::new();
    if let Some(task) = &scope.task {
        levels.push((
            LedgerScope::task(&scope.tenant, task),
            Window::all(),
            budget.per_task(),
        ));
    }
    let wf = LedgerScope::workflow(&scope.tenant, &scope.workflow);
    let tn = LedgerScope::tenant(&scope.tenant);
    for (s, windows) in [(wf, &budget.per_workflow), (tn, &budget.per_tenant)] {
        if let Some(l) = &windows.day {
            levels.push((s.clone(), day.clone(), l.clone()));
        }
        if let Some(l) = &windows.month {
            levels.push((s.clone(), month.clone(), l.clone()));
        }
    }
    levels.retain(|(_, _, limits)| *limits != Limits::default());
    levels
}

/// The ledger lines an amount is charged to, with their limits.
pub fn charges(budget: &Budget, scope: &Scope, now_ms: i64, spend: &Spend) -> Vec<Charge> {
    let mut out = Vec::new();
    for (scope, window, limits) in levels(budget, scope, now_ms) {
        for (metric, amount) in spend.metrics() {
            let limit = limit_of(&limits, metric);
            if amount != 0 || limit.is_some() {
                out.push(Charge {
                    scope: scope.clone(),
                    window: window.clone(),
                    metric,
                    amount,
                    limit,
                });
            }
        }
    }
    out
}

/// The error for a refused reservation, naming the limit and what remains.
pub fn exceeded_error(e: &Exceeded) -> Error {
    let name = e.metric.limit_name();
    let fmt = |v: i64| {
        if e.metric == Metric::CostMicroUsd {
            format!("{:.6} USD", v as f64 / 1e6)
        } else {
            v.to_string()
        }
    };
    let remaining = (e.limit - e.used - e.reserved).max(0);
    let window = if e.window.is_all() {
        String::new()
    } else {
        format!(" ({})", e.window)
    };
    Error::new(
        ErrorKind::BudgetExceeded,
        format!(
            "{}{window}: {name} is {}; used {}, reserved by running invocations {}, remaining {}, this invocation needs {}",
            e.scope,
            fmt(e.limit),
            fmt(e.used),
            fmt(e.reserved),
            fmt(remaining),
            fmt(e.requested)
        ),
    )
}

/// Budget ledgers over a storage backend.
#[derive(Clone)]
pub struct Ledger {
    storage: Arc<dyn Storage>,
}

impl Ledger {
    pub fn new(storage: Arc<dyn Storage>) -> Ledger {
        Ledger { storage }
    }

    /// Admit an invocation: reserve its worst case and write its row
    /// running, atomically, or fail with `budget_exceeded` (naming the
    /// limit) or `conflict` (its row is no longer this host's to run).
    pub async fn admit(&self, admit: crate::storage::Admit) -> Result<()> {
        match self.storage.invocation_admit(admit).await? {
            Ok(()) => Ok(()),
            Err(crate::storage::Refused::Exceeded(e)) => Err(exceeded_error(&e)),
            Err(crate::storage::Refused::Taken) => Err(Error::new(
                ErrorKind::Conflict,
                "this invocation is no longer this host's to run (the reaper or another host took it)",
            )),
        }
    }

    /// Record model tokens the orchestrator used for a task. Returns the
    /// token limits now exceeded (the tokens are recorded regardless: they
    /// were spent).
    pub async fn report_tokens(
        &self,
        budget: &Budget,
        scope: &Scope,
        now_ms: i64,
        input: i64,
        output: i64,
    ) -> Result<Vec<Error>> {
        let spend = Spend {
            input_tokens: input,
            output_tokens: output,
            ..Spend::default()
        };
        let charges = charges(budget, scope, now_ms, &spend);
        self.storage.budget_charge(charges.clone()).await?;
        let mut over = Vec::new();
        for c in charges.iter().filter(|c| c.metric.is_tokens()) {
            if let Some(limit) = c.limit {
                let usage = self.storage.budget_usage(&c.scope).await?;
                if let Some(u) = usage
                    .iter()
                    .find(|u| u.window == c.window && u.metric == c.metric)
                    && u.used > limit
                {
                    over.push(exceeded_error(&Exceeded {
                        scope: c.scope.clone(),
                        window: c.window.clone(),
                        metric: c.metric,
                        limit,
                        used: u.used,
                        reserved: u.reserved,
                        requested: 0,
                    }));
                }
            }
        }
        Ok(over)
    }

    /// The ledger lines of a scope (`task:<tenant>/<task>`, ...).
    pub async fn usage(&self, scope: &LedgerScope) -> Result<Vec<crate::storage::Usage>> {
        self.storage.budget_usage(scope).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_their_stored_names() {
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(
            names,
            [
                "tool_calls",
                "outbound_calls",
                "fuel",
                "wall_ms",
                "cost_micro_usd",
                "input_tokens",
                "output_tokens"
            ]
        );
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.as_str()), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
            assert_eq!(
                m.limit_name(),
                format!("max_{}", m.as_str()).replace("_micro_usd", "_usd")
            );
        }
        assert_eq!(Metric::parse("calls"), None);
    }

    #[test]
    fn ledgers_keep_their_stored_names() {
        // 2026-11-26T00:00:00Z
        let t = 1_795_651_200_000;
        assert_eq!(LedgerScope::task("acme", "t/1"), "task:acme/t/1");
        assert_eq!(LedgerScope::workflow("acme", "*"), "workflow:acme/*");
        assert_eq!(LedgerScope::tenant("_"), "tenant:_");
        assert_eq!(Window::day(t), "day:2026-11-26");
        assert_eq!(Window::day(t - 1), "day:2026-11-25");
        assert_eq!(Window::month(t), "month:2026-11");
        assert!(Window::all().is_all() && !Window::day(t).is_all());
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(1_795_651_200_000), (2026, 11, 26));
        assert_eq!(civil_date(951_782_400_000), (2000, 2, 29));
        assert_eq!(civil_date(-86_400_000), (1969, 12, 31));
    }
}
