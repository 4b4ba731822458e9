//! Budget ledgers: reservations (taken at admission), settlements, usage.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// One charge against a budget ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    /// `task:<tenant>/<task>`, `workflow:<tenant>/<workflow>`, `tenant:<tenant>`.
    pub scope: String,
    /// `all`, `day:2026-11-26`, `month:2026-11`.
    pub window: String,
    /// `tool_calls`, `outbound_calls`, `fuel`, `wall_ms`, `cost_micro_usd`,
    /// `input_tokens`, `output_tokens`.
    pub metric: String,
    pub amount: i64,
    /// The limit, if any: a reservation that would pass it fails.
    pub limit: Option<i64>,
}

/// A reservation refused: which limit, and what was left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exceeded {
    pub scope: String,
    pub window: String,
    pub metric: String,
    pub limit: i64,
    pub used: i64,
    pub reserved: i64,
    pub requested: i64,
}

/// A ledger line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub scope: String,
    pub window: String,
    pub metric: String,
    pub used: i64,
    pub reserved: i64,
}

/// Budget ledgers: reservations (taken at admission), settlements, usage.
pub trait BudgetStore: Send + Sync {
    /// Reserve all charges, or none: `Ok(Err(..))` names the first limit
    /// that would be passed.
    fn budget_reserve(
        &self,
        charges: Vec<Charge>,
    ) -> BoxFuture<'_, Result<std::result::Result<(), Exceeded>>>;
    /// Release reservations and record what was actually used.
    fn budget_settle(&self, reserved: Vec<Charge>, used: Vec<Charge>) -> BoxFuture<'_, Result<()>>;
    /// Ledger lines of a scope.
    fn budget_usage(&self, scope: &str) -> BoxFuture<'_, Result<Vec<Usage>>>;
}
