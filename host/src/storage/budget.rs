//! Budget ledgers: reservations (taken at admission), settlements, usage.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
pub use crate::budget::Metric;
use crate::error::Result;
pub use crate::ids::{LedgerScope, Window};
#[allow(unused_imports)]
use serde::Serialize;

/// One charge against a budget ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Charge {
    pub scope: LedgerScope,
    pub window: Window,
    pub metric: Metric,
    pub amount: i64,
    /// The limit, if any: a reservation that would pass it fails.
    pub limit: Option<i64>,
}

/// A reservation refused: which limit, and what was left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exceeded {
    pub scope: LedgerScope,
    pub window: Window,
    pub metric: Metric,
    pub limit: i64,
    pub used: i64,
    pub reserved: i64,
    pub requested: i64,
}

/// A ledger line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub scope: LedgerScope,
    pub window: Window,
    pub metric: Metric,
    pub used: i64,
    pub reserved: i64,
}

/// A stored ledger line as the backends read it; `None` for a metric no
/// host writes (a hand-edited row), left out with a warning by every
/// backend.
pub fn usage_line(
    scope: LedgerScope,
    window: Window,
    metric: &str,
    used: i64,
    reserved: i64,
) -> Option<Usage> {
    let Some(metric) = Metric::parse(metric) else {
        tracing::warn!(
            metric,
            "budget: a ledger line with an unknown metric is left out"
        );
        return None;
    };
    Some(Usage {
        scope,
        window,
        metric,
        used,
        reserved,
    })
}

/// Budget ledgers: reservations (taken at admission), settlements, usage.
pub trait BudgetStore: Send + Sync {
    /// Record usage outside any invocation (reported model tokens).
    fn budget_charge(&self, used: Vec<Charge>) -> BoxFuture<'_, Result<()>>;
    /// Ledger lines of a scope.
    fn budget_usage(&self, scope: &LedgerScope) -> BoxFuture<'_, Result<Vec<Usage>>>;
}

/// The budget check every backend applies when reserving: `charge` on a
/// line with `used` and `reserved` passes its limit?
pub fn exceeds(charge: &Charge, used: i64, reserved: i64) -> Option<Exceeded> {
    let limit = charge.limit?;
    (used.saturating_add(reserved).saturating_add(charge.amount) > limit).then(|| Exceeded {
        scope: charge.scope.clone(),
        window: charge.window.clone(),
        metric: charge.metric,
        limit,
        used,
        reserved,
        requested: charge.amount,
    })
}

/// What an admission reserves: the limited lines of its worst case, each
/// once (a worst case naming a line twice reserves the sum, against the
/// last limit named), in line order.
pub fn reservations(worst: &[Charge]) -> Vec<Charge> {
    let mut lines: std::collections::BTreeMap<(&str, &str, &str), Charge> =
        std::collections::BTreeMap::new();
    for c in worst.iter().filter(|c| c.limit.is_some()) {
        lines
            .entry((&c.scope, &c.window, c.metric.as_str()))
            .and_modify(|m| {
                m.amount = m.amount.saturating_add(c.amount);
                m.limit = c.limit;
            })
            .or_insert_with(|| c.clone());
    }
    lines.into_values().collect()
}

/// The net change per ledger line of releasing `release` and recording
/// `charge`: `(used += u, reserved -= r)`, lines with no change left out.
pub fn settlement<'a>(
    release: &'a [Charge],
    charge: &'a [Charge],
) -> std::collections::BTreeMap<(&'a str, &'a str, &'a str), (i64, i64)> {
    let mut lines: std::collections::BTreeMap<(&str, &str, &str), (i64, i64)> =
        std::collections::BTreeMap::new();
    // Saturating: amounts may come from a stored row (a reaped invocation's
    // worst case), and a row edited to i64::MAX must not wrap to a credit.
    for c in release.iter().filter(|c| c.amount != 0) {
        let line = lines
            .entry((&c.scope, &c.window, c.metric.as_str()))
            .or_default();
        line.1 = line.1.saturating_add(c.amount);
    }
    for c in charge.iter().filter(|c| c.amount != 0) {
        let line = lines
            .entry((&c.scope, &c.window, c.metric.as_str()))
            .or_default();
        line.0 = line.0.saturating_add(c.amount);
    }
    lines
}

/// What ending an invocation does to the ledgers: release the reserved
/// (limited) lines of its `worst` case, and charge `used`, or, when it was
/// lost (`None`), its whole worst case.
pub fn end_charges(worst: &[Charge], used: Option<&[Charge]>) -> (Vec<Charge>, Vec<Charge>) {
    let reserved = worst
        .iter()
        .filter(|c| c.limit.is_some())
        .cloned()
        .collect();
    let charged = used.map_or_else(|| worst.to_vec(), <[Charge]>::to_vec);
    (reserved, charged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{LedgerScope, Window};

    /// A stored worst case edited to amounts that overflow saturates: it is
    /// never wrapped into a credit that lowers the ledger.
    #[test]
    fn a_settlement_of_huge_stored_amounts_saturates() {
        let c = Charge {
            scope: LedgerScope::tenant("acme"),
            window: Window::all(),
            metric: Metric::ToolCalls,
            amount: i64::MAX,
            limit: Some(5),
        };
        let twice = [c.clone(), c];
        let lines = settlement(&twice, &twice);
        let (used, released) = lines.values().next().copied().unwrap();
        assert_eq!((used, released), (i64::MAX, i64::MAX));
    }
}
