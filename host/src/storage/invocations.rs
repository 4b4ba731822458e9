//! Invocation rows: one per invocation, from admission to its end.
//!
//! The lifecycle (ARCHITECTURE.md has the diagram):
//!
//! * **running**: written at admission ([`InvocationStore::invocation_admit`],
//!   in the transaction that reserves its budget), or earlier, unadmitted,
//!   when an Idempotency-Key starts it or an approval lets it run. It has an
//!   `owner` (the host instance running it) and a `lease_until` the owner
//!   renews while it runs; it holds its worst-case charges.
//! * **pending_approval**: parked for a human (no owner, no lease).
//! * **ok / error / refused**: final. A [`crate::storage::Work`] with an
//!   [`End`] writes it, settling the reservation by the row's own charges.
//!
//! Who moves a row: the owner (admission, completion), an approver (pending
//! → running, or → refused), the reaper (running with an expired lease →
//! error `host_lost`; pending past its expiry → refused `approval_expired`).
//! Every transition is conditional on the state it expects ([`Expect`]), so
//! two movers never both win.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
pub use crate::record::Status;
#[allow(unused_imports)]
use serde::Serialize;

/// An invocation's record, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationRecord {
    pub id: InvocationId,
    pub tenant: TenantId,
    pub tool: String,
    pub function: String,
    /// The tool version that ran (registered tools only).
    pub version: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    pub principal: Option<String>,
    /// `running`, `pending_approval`, `ok`, `error` (the tool ran and
    /// failed, or its host was lost) or `refused` (it never ran).
    pub status: Status,
    pub error_kind: Option<String>,
    pub created_ms: i64,
    /// The response body (JSON) the caller was given (`{}` while running).
    pub response: String,
}

/// Which invocation records to list: newest first.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub tool: Option<String>,
    pub status: Option<Status>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    /// The error kind (`error_kind` column).
    pub error_kind: Option<String>,
    /// Only records created at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only records created before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Only records older than this position (from a previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// Which invocations the reports ([`crate::stats`]) aggregate: a tenant's,
/// created in `[since_ms, until_ms)`, newest first, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct SampleFilter {
    pub tool: Option<String>,
    pub function: Option<String>,
    pub workflow: Option<String>,
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: i64,
}

/// One invocation as the reports need it: who, what, how it ended, how
/// long it ran and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationSample {
    pub tool: String,
    pub function: String,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    pub status: Status,
    pub error_kind: Option<String>,
    pub created_ms: i64,
    /// The response's `usage.wall_ms` (none while running).
    pub wall_ms: Option<i64>,
    /// The record's `charged.cost_micro_usd` (none when nothing was
    /// charged: refused before admission, or recorded before records
    /// carried their charge).
    pub cost_micro_usd: Option<i64>,
}

/// A record's sample: the wall time and cost read from its stored response
/// (`usage.wall_ms`, `charged.cost_micro_usd`). What every backend returns
/// from [`InvocationStore::invocation_samples`] (SQL backends read the
/// same two JSON paths in the query).
pub fn sample_of(r: &InvocationRecord) -> InvocationSample {
    let v: serde_json::Value = serde_json::from_str(&r.response).unwrap_or_default();
    InvocationSample {
        tool: r.tool.clone(),
        function: r.function.clone(),
        workflow: r.workflow.clone(),
        task_id: r.task_id.clone(),
        status: r.status,
        error_kind: r.error_kind.clone(),
        created_ms: r.created_ms,
        wall_ms: v
            .pointer("/usage/wall_ms")
            .and_then(serde_json::Value::as_i64),
        cost_micro_usd: v
            .pointer("/charged/cost_micro_usd")
            .and_then(serde_json::Value::as_i64),
    }
}

/// What identifies a new running row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub id: InvocationId,
    pub tenant: TenantId,
    pub tool: String,
    pub function: String,
    pub version: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    pub principal: Option<String>,
    /// `http`, `mcp`, `cli`, `approval`.
    pub transport: String,
    /// The Idempotency-Key it answers, if any.
    pub idempotency_key: Option<String>,
    pub created_ms: i64,
    /// The host instance running it, and until when its lease holds.
    pub owner: String,
    pub lease_until: i64,
}

/// Admission: reserve, and mark the row running and admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admit {
    pub run: NewRun,
    /// The row was written before admission (by its Idempotency-Key, or by
    /// the approval that let it run): it must still be there, this owner's
    /// and unadmitted — if the reaper forgot or ended it meanwhile, the
    /// admission is refused ([`Refused::Taken`]), never taken as new.
    pub existing: bool,
    /// The invocation's worst case, per ledger line: the lines with a limit
    /// are reserved now (all or none); all are charged if it is lost.
    pub worst: Vec<Charge>,
}

/// Why an admission was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A limit would be passed.
    Exceeded(Exceeded),
    /// The row exists and is not this owner's unadmitted running row (the
    /// reaper finished it, or another host runs it).
    Taken,
}

/// A running row whose lease expired (its host died or hung), as the
/// reaper needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub run: NewRun,
    /// Whether it was admitted (it may have run): if not, nothing ran.
    pub admitted: bool,
    /// The approval it runs under, with the callback URL to notify.
    pub approval_id: Option<ApprovalId>,
    pub callback_url: Option<String>,
}

/// What a [`crate::storage::Work`] expects of the invocation row it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No row, or a running row owned by `owner` (the normal end).
    Mine { owner: String },
    /// A running row owned by `owner` (its task ended without finishing:
    /// the owner itself ends it as lost).
    Abandoned { owner: String },
    /// A running row whose lease ended before `now_ms` (the reaper).
    Expired { now_ms: i64 },
    /// A row waiting for approval (denied, or expired).
    Pending,
}

/// The end (or parking) of an invocation, in a [`crate::storage::Work`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The record to store (status final, or `pending_approval`).
    pub record: InvocationRecord,
    pub expect: Expect,
    /// What it used: charged once its reservation is released. `None`:
    /// charge its worst case (it was lost).
    pub used: Option<Vec<Charge>>,
}

/// The row's state, as [`check`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowState {
    /// `None`: a stored status no host writes (a hand-edited row); no
    /// expectation matches it, so nothing moves it.
    pub status: Option<Status>,
    pub owner: Option<String>,
    pub lease_until: Option<i64>,
}

/// Whether an invocation row in `state` (`None`: no row) may be moved as
/// `expect` says. The one rule every backend applies.
pub fn check(expect: &Expect, state: Option<&RowState>) -> bool {
    match (expect, state) {
        (Expect::Mine { .. }, None) => true,
        (Expect::Mine { owner } | Expect::Abandoned { owner }, Some(s)) => {
            s.status == Some(Status::Running) && s.owner.as_deref() == Some(owner.as_str())
        }
        (Expect::Expired { now_ms }, Some(s)) => {
            s.status == Some(Status::Running) && s.lease_until.is_some_and(|l| l < *now_ms)
        }
        (Expect::Pending, Some(s)) => s.status == Some(Status::PendingApproval),
        _ => false,
    }
}

/// Invocation rows.
pub trait InvocationStore: Send + Sync {
    /// One of a tenant's invocation records.
    fn invocation_get(
        &self,
        tenant: &TenantId,
        id: &InvocationId,
    ) -> BoxFuture<'_, Result<Option<InvocationRecord>>>;

    /// A tenant's invocation records, newest first, each with its position
    /// (for [`InvocationFilter::before`]).
    fn invocation_list(
        &self,
        tenant: &TenantId,
        filter: InvocationFilter,
    ) -> BoxFuture<'_, Result<Vec<(i64, InvocationRecord)>>>;

    /// A tenant's invocations created in `[since_ms, until_ms)` that match
    /// the filter, as [`sample_of`] reads them, newest first (by
    /// `created_ms`, then position), at most `limit`: what the reports
    /// aggregate.
    fn invocation_samples(
        &self,
        tenant: &TenantId,
        filter: SampleFilter,
    ) -> BoxFuture<'_, Result<Vec<InvocationSample>>>;

    /// Admission, atomically: reserve the limited lines of `worst` (all or
    /// none: [`Refused::Exceeded`] names the first limit passed) and write
    /// the row running, admitted, holding `worst` — a new row, or this
    /// owner's unadmitted running row ([`Refused::Taken`] otherwise).
    fn invocation_admit(
        &self,
        admit: Admit,
    ) -> BoxFuture<'_, Result<std::result::Result<(), Refused>>>;

    /// Extend the leases of `owner`'s running rows among `ids` to
    /// `lease_until`; returns how many were extended.
    fn invocation_renew(
        &self,
        owner: &str,
        ids: Vec<InvocationId>,
        lease_until: i64,
    ) -> BoxFuture<'_, Result<u64>>;

    /// Running rows whose lease ended before `now_ms`, oldest first.
    fn invocation_expired(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<Lost>>>;

    /// A running row, as the reaper would see it if it were lost.
    fn invocation_running(&self, id: &InvocationId) -> BoxFuture<'_, Result<Option<Lost>>>;

    /// Delete an unadmitted running row (nothing ran) if `expect` holds,
    /// with the Idempotency-Key that started it (a retry runs anew).
    /// Returns whether it was deleted.
    fn invocation_forget(&self, id: &InvocationId, expect: Expect) -> BoxFuture<'_, Result<bool>>;
}
