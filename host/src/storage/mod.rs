//! All persistent state: one store trait per domain ([`AuditStore`],
//! [`BudgetStore`], [`RegistryStore`], [`KeyStore`], [`InvocationStore`],
//! [`PolicyStore`], [`IdempotencyStore`], [`ApprovalStore`], [`CacheStore`],
//! [`MetaStore`]), and [`Storage`], all of them in one backend.
//!
//! The stores are what the layers above need from a database, and nothing
//! more; the *decisions* (chain linking, budget checks, the idempotency state
//! machine, an approval's effective status) are pure functions the backends
//! share, not rules each re-implements. The embedded default
//! is SQLite ([`sqlite::SqliteStorage`]) in the data dir; the PostgreSQL
//! backend ([`postgres::PostgresStorage`]) implements the same traits so
//! that many `host serve` replicas share one truth. Callers hold an `Arc<dyn Storage>` and never see SQL.
//!
//! Invariants every backend keeps:
//! * `audit_append` links each entry to the previous entry of its chain
//!   ([`crate::audit::chain_hash`]) inside one transaction that also holds the
//!   chain head, so concurrent writers (threads, processes, replicas) never
//!   fork a chain; entries are durable when it returns.
//! * `budget_reserve` checks and reserves all charges atomically: either all
//!   are reserved or none, and concurrent reservations never overspend.

pub mod memory;
pub mod postgres;
pub mod sqlite;

mod approvals;
mod audit;
mod budget;
mod cache;
mod columns;
mod idempotency;
mod invocations;
mod keys;
mod meta;
mod outbox;
mod policies;
mod registry;
mod rows;

pub use approvals::*;
pub use audit::*;
pub use budget::*;
pub use cache::*;
pub use idempotency::*;
pub use invocations::*;
pub use keys::*;
pub use meta::*;
pub use outbox::*;
pub use policies::*;
pub use registry::*;

pub use crate::ids::{ApprovalId, InvocationId, KeyId, TenantId};
pub(crate) use rows::{
    APPROVAL_COLUMNS, INVOCATION_COLUMNS, OUTBOX_COLUMNS, POLICY_CURRENT, VERSION_COLUMNS,
    approval_row, entry_row, invocation_row, key_row, outbox_row, policy_row, tool_entry_row,
    tool_version_row, usage_row,
};
use std::sync::Arc;

/// The store traits, for calling their methods on a concrete backend.
pub mod prelude {
    pub use super::{
        ApprovalStore, AuditStore, BudgetStore, CacheStore, IdempotencyStore, InvocationStore,
        KeyStore, MetaStore, OutboxStore, PolicyStore, RegistryStore, Storage,
    };
}

/// One unit of work: audit entries and everything they describe, committed
/// together or not at all. The backend commits many at once (one
/// transaction, one fsync) but answers each on its own: a work whose
/// precondition fails ([`End::expect`], a [`Decision`] that lost) is left
/// out, whole, and answered [`crate::ErrorKind::Conflict`]; the others
/// commit.
#[derive(Debug, Clone, Default)]
pub struct Work {
    /// Audit entries (canonical JSON), appended to their chains in order.
    pub entries: Vec<NewEntry>,
    /// A decision on an approval request (checked first).
    pub decide: Option<Decision>,
    /// The invocation this work ends or parks: its record, and the
    /// settlement of its reservation by the row's own charges.
    pub end: Option<End>,
    /// Ledger lines charged outside an invocation (reported tokens).
    pub charge: Vec<Charge>,
    /// Approval requests to store.
    pub approvals: Vec<ApprovalRecord>,
    /// Idempotency keys whose answer is now final.
    pub idempotency: Vec<IdempotencyDone>,
    /// Results to cache.
    pub cache: Vec<CacheEntry>,
    /// Messages to deliver once committed.
    pub outbox: Vec<OutboxMessage>,
}

impl Work {
    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.decide.is_none()
            && self.end.is_none()
            && self.charge.is_empty()
            && self.approvals.is_empty()
            && self.idempotency.is_empty()
            && self.cache.is_empty()
            && self.outbox.is_empty()
    }
}

pub use crate::audit::statement::{Notary, Signed};

/// Everything Toolhost persists: one store per domain, all in one backend
/// (so that a unit of work, [`Work`], commits atomically).
pub trait Storage:
    AuditStore
    + BudgetStore
    + RegistryStore
    + KeyStore
    + InvocationStore
    + PolicyStore
    + IdempotencyStore
    + ApprovalStore
    + CacheStore
    + MetaStore
    + OutboxStore
    + Send
    + Sync
    + 'static
{
}

impl<T> Storage for T where
    T: AuditStore
        + BudgetStore
        + RegistryStore
        + KeyStore
        + InvocationStore
        + PolicyStore
        + IdempotencyStore
        + ApprovalStore
        + CacheStore
        + MetaStore
        + OutboxStore
        + Send
        + Sync
        + 'static
{
}
