//! All persistent state: one store trait per domain ([`AuditStore`],
//! [`BudgetStore`], [`RegistryStore`], [`KeyStore`], [`InvocationStore`],
//! [`PolicyStore`], [`IdempotencyStore`], [`ApprovalStore`], [`CacheStore`],
//! [`MetaStore`]), and [`Storage`], all of them in one backend.
//!
//! The stores are what the layers above need from a database, and nothing
//! more; the *decisions* (chain linking, budget checks, the idempotency state
//! machine, an approval's effective status) are pure functions the backends
//! share, not rules each re-implements. The embedded default
//! is SQLite ([`sqlite::SqliteStorage`]) in the data dir; a PostgreSQL backend
//! implements the same trait so that many `host serve` replicas share one
//! truth. Callers hold an `Arc<dyn Storage>` and never see SQL.
//!
//! Invariants every backend keeps:
//! * `audit_append` links each entry to the previous entry of its chain
//!   ([`crate::audit::chain_hash`]) inside one transaction that also holds the
//!   chain head, so concurrent writers (threads, processes, replicas) never
//!   fork a chain; entries are durable when it returns.
//! * `budget_reserve` checks and reserves all charges atomically: either all
//!   are reserved or none, and concurrent reservations never overspend.

pub mod memory;
pub mod sqlite;

mod approvals;
mod audit;
mod budget;
mod cache;
mod idempotency;
mod invocations;
mod keys;
mod meta;
mod policies;
mod registry;

pub use approvals::*;
pub use audit::*;
pub use budget::*;
pub use cache::*;
pub use idempotency::*;
pub use invocations::*;
pub use keys::*;
pub use meta::*;
pub use policies::*;
pub use registry::*;

use std::sync::Arc;

/// The store traits, for calling their methods on a concrete backend.
pub mod prelude {
    pub use super::{
        ApprovalStore, AuditStore, BudgetStore, CacheStore, IdempotencyStore, InvocationStore,
        KeyStore, MetaStore, PolicyStore, RegistryStore, Storage,
    };
}

/// What one audit commit writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub entries: Vec<NewEntry>,
    /// Reservations to release.
    pub release: Vec<Charge>,
    /// Usage to record.
    pub charge: Vec<Charge>,
    /// Invocation records to store (with the audit entries that describe
    /// them, so that the two always agree). A record with an existing id
    /// replaces it (an approved invocation's result replaces its pending
    /// record).
    pub invocations: Vec<InvocationRecord>,
    /// Approval requests to store.
    pub approvals: Vec<ApprovalRecord>,
    /// Idempotency keys whose response is now final.
    pub idempotency: Vec<IdempotencyDone>,
    /// Results to cache.
    pub cache: Vec<CacheEntry>,
}

pub use crate::audit::statement::{Notary, Signed};

/// Everything Toolhost persists: one store per domain, all in one backend
/// (so that a completion's unit of work, [`Batch`], commits atomically).
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
        + Send
        + Sync
        + 'static
{
}
