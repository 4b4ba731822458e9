//! The audit chain: entries, heads, signed statements, the registry of chains.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// An audit entry to append: its chain (one per tenant) and its canonical
/// JSON body.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub chain: String,
    pub time_ms: i64,
    pub body: String,
}

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEntry {
    pub chain: String,
    pub seq: i64,
    pub time_ms: i64,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

/// A signed statement about a chain position, as stored: the columns
/// (`chain`, `seq`, `hash`, `time_ms`, `kind`) index it; `statement` is
/// the signed canonical text ([`crate::audit::statement`]), and only what it
/// says counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
    pub time_ms: i64,
    /// ed25519 signature (hex) over the statement.
    pub signature: String,
    /// `head` (the latest state, signed by every commit), `periodic`,
    /// `prune` (the anchor for the first entry left after pruning),
    /// `export`; `tip` for the head row's own, unsigned, `seq`/`hash`.
    pub kind: String,
    /// The signed statement (canonical JSON); empty for a `tip` and for
    /// checkpoints written before statements existed.
    #[serde(default)]
    pub statement: String,
}

impl Checkpoint {
    /// The statement and its signature.
    pub fn signed(&self) -> Signed {
        Signed {
            statement: self.statement.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// The audit chain: entries, heads, signed statements, the registry of chains.
pub trait AuditStore: Send + Sync {
    /// Commit units of work in one transaction: check each one's
    /// preconditions in order (its [`Decision`], its [`End::expect`] by
    /// [`check`]) and leave out, whole, each that fails; read the touched
    /// chains' heads (and the registry if a chain is new),
    /// [`crate::audit::link::link`] the entries of the rest, and write what
    /// it returns (entries, heads with their signed statements, periodic
    /// checkpoints, the registry) with everything the works carry. Durable on
    /// return. Answers each work: its stored entries, or `Conflict`.
    fn audit_commit(
        &self,
        works: Vec<Work>,
        notary: Arc<Notary>,
    ) -> BoxFuture<'_, Result<Vec<Result<Vec<StoredEntry>>>>>;
    /// The signed registry of chains, if one was stored.
    fn audit_registry(&self) -> BoxFuture<'_, Result<Option<Signed>>>;
    /// Replace the registry (creating the first one; re-signing on upgrade).
    fn audit_registry_put(&self, registry: Signed) -> BoxFuture<'_, Result<()>>;
    /// Replace a checkpoint row's kind, statement and signature (re-signing
    /// legacy checkpoints on upgrade), and the head row's signed head.
    fn audit_resign(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<()>>;
    /// Tenants (chain names) that have invocation records or approval
    /// requests: each must have an audit chain.
    fn audited_tenants(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    /// Entries of a chain with `seq > after`, in order, at most `limit`.
    fn audit_read(
        &self,
        chain: &str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>>;
    /// Entries of a chain with `after < seq <= upto`, in order.
    fn audit_range(
        &self,
        chain: &str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>>;
    /// The names of all chains.
    fn audit_chains(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    /// All checkpoints of a chain, oldest first, then its current head as
    /// kind `tip` (unsigned) and its signed head as kind `head`.
    fn checkpoints(&self, chain: &str) -> BoxFuture<'_, Result<Vec<Checkpoint>>>;
    /// Retention, in one transaction: store the signed `prune` anchor and
    /// delete the chain's entries with `seq <= anchor.seq` (and the periodic
    /// checkpoints before it). Returns how many entries were deleted.
    fn audit_prune(&self, anchor: Checkpoint) -> BoxFuture<'_, Result<u64>>;
}
