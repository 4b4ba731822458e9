//! All persistent state, behind one trait.
//!
//! [`Storage`] is what the gate's layers (budget ledgers, the audit chain,
//! signing keys) need from a database, and nothing more. The embedded default
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

use crate::error::Result;
use crate::gate::BoxFuture;
use serde::Serialize;
use std::sync::Arc;

/// An audit entry to append: its chain (one per tenant) and its canonical
/// JSON body.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub chain: String,
    pub time_ms: i64,
    pub body: String,
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

/// A human-approval request: the decision packet, and the call to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    /// `apr_…`.
    pub id: String,
    pub tenant: String,
    /// The invocation that waits (its record is `pending_approval`).
    pub invocation_id: String,
    /// `pending`, `approved` (and run), `denied`; a pending one past
    /// `expires_ms` is expired.
    pub status: String,
    pub tool: String,
    pub function: String,
    pub version: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    /// The arguments to run with (kept until decided, then erased; never
    /// shown).
    #[serde(skip)]
    pub args: String,
    /// The arguments with the policy's redactions, for approvers.
    pub args_redacted: String,
    pub args_sha256: String,
    /// The rule that asked for approval.
    pub rule: String,
    /// The requesting key's id.
    pub requester: Option<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub decided_by: Option<String>,
    pub decided_ms: Option<i64>,
    pub reason: Option<String>,
    /// Where the outcome is POSTed once decided.
    pub callback_url: Option<String>,
}

/// The final response of an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyDone {
    pub tenant: String,
    pub key: String,
    pub http_status: u16,
    pub response: String,
}

/// What starting an idempotent request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key is new (or its earlier use expired or was abandoned): run.
    Started,
    /// Done before with the same fingerprint: answer this again.
    Replay { http_status: u16, response: String },
    /// Used before with another request.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

/// A cached result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub tenant: String,
    pub key: String,
    /// The result JSON.
    pub result: String,
    pub expires_ms: i64,
}

pub use crate::audit::statement::{Notary, Signed};

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

/// One immutable version of a registered tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ToolVersion {
    pub tenant: String,
    pub name: String,
    pub version: String,
    /// SHA-256 of the component bytes (the blob key).
    pub digest: String,
    /// The `package-docs` section the tool was registered with, if any.
    #[serde(skip)]
    pub docs: Option<Vec<u8>>,
    /// Blob key of the precompiled artifact, and the engine it is for.
    pub artifact: Option<String>,
    pub engine: Option<String>,
    /// The function signatures, for listing without loading.
    pub functions: Vec<String>,
    pub created_ms: i64,
}

/// A tool name: which version it points at, and whether it is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ToolEntry {
    pub tenant: String,
    pub name: String,
    pub current: String,
    pub disabled: bool,
    pub updated_ms: i64,
}

/// What registering a version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new version was stored.
    Created,
    /// The same bytes were already registered under this version.
    Exists,
    /// The version exists with other bytes (versions are immutable).
    Conflict { digest: String },
}

/// An API key as stored: the secret part only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    /// The public id (the `thk_<id>_` prefix of the key).
    pub id: String,
    pub tenant: String,
    /// `invoke`, `approve`, `admin`, `audit`.
    pub roles: Vec<String>,
    /// SHA-256 (hex) of the key's secret part.
    #[serde(skip_serializing)]
    pub hash: String,
    pub label: Option<String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// A finished (or refused) invocation, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationRecord {
    pub id: String,
    pub tenant: String,
    pub tool: String,
    pub function: String,
    /// The tool version that ran (registered tools only).
    pub version: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    pub principal: Option<String>,
    /// `ok`, `error` (the tool ran and failed) or `refused` (it never ran).
    pub status: String,
    pub error_kind: Option<String>,
    pub created_ms: i64,
    /// The response body (JSON) the caller was given.
    pub response: String,
}

/// Which invocation records to list: newest first.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub tool: Option<String>,
    pub status: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    /// Only records older than this position (from a previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// A policy as stored: each `policy_put` is a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredPolicy {
    pub version: i64,
    /// Where it came from (a file name).
    pub name: String,
    pub text: String,
    pub created_ms: i64,
}

/// Everything Toolhost persists.
pub trait Storage: Send + Sync + 'static {
    /// Commit a batch in one transaction: read the touched chains' heads
    /// (and the registry if a chain is new), [`crate::audit::link::link`]
    /// the entries, and write what it returns (entries, heads with their
    /// signed statements, periodic checkpoints, the registry); settle its
    /// budget lines; store its records. Durable on return. Returns the
    /// stored entries in order.
    fn audit_append(
        &self,
        batch: Batch,
        notary: Arc<Notary>,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>>;

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

    /// Store bytes under their SHA-256 (idempotent).
    fn blob_put<'a>(&'a self, digest: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>>;

    /// The bytes stored under a digest.
    fn blob_get(&self, digest: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>>>;

    /// Register a version (immutable once stored); with `deploy`, point the
    /// name at it (creating the name if needed).
    fn tool_register(
        &self,
        version: ToolVersion,
        deploy: bool,
    ) -> BoxFuture<'_, Result<Registered>>;

    /// A version of a tool.
    fn tool_version(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> BoxFuture<'_, Result<Option<ToolVersion>>>;

    /// All versions of a tool, oldest first.
    fn tool_versions(&self, tenant: &str, name: &str) -> BoxFuture<'_, Result<Vec<ToolVersion>>>;

    /// A tool name's entry.
    fn tool_get(&self, tenant: &str, name: &str) -> BoxFuture<'_, Result<Option<ToolEntry>>>;

    /// A tenant's tools, by name.
    fn tool_list(&self, tenant: &str) -> BoxFuture<'_, Result<Vec<ToolEntry>>>;

    /// Re-point a name at an existing version and/or (dis)able it. Returns
    /// false when the tool or version does not exist.
    fn tool_update(
        &self,
        tenant: &str,
        name: &str,
        version: Option<&str>,
        disabled: Option<bool>,
    ) -> BoxFuture<'_, Result<bool>>;

    /// Record a (re)built precompiled artifact for a version.
    fn tool_set_artifact(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
        artifact: &str,
        engine: &str,
    ) -> BoxFuture<'_, Result<()>>;

    /// Store a new API key.
    fn key_put(&self, key: ApiKeyRecord) -> BoxFuture<'_, Result<()>>;

    /// An API key by id.
    fn key_get(&self, id: &str) -> BoxFuture<'_, Result<Option<ApiKeyRecord>>>;

    /// All keys (of one tenant, or of all).
    fn key_list(&self, tenant: Option<&str>) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>>>;

    /// Revoke a key; returns false when there is no such active key.
    fn key_revoke(&self, id: &str, time_ms: i64) -> BoxFuture<'_, Result<bool>>;

    /// One of a tenant's invocation records.
    fn invocation_get(
        &self,
        tenant: &str,
        id: &str,
    ) -> BoxFuture<'_, Result<Option<InvocationRecord>>>;

    /// A tenant's invocation records, newest first, each with its position
    /// (for [`InvocationFilter::before`]).
    fn invocation_list(
        &self,
        tenant: &str,
        filter: InvocationFilter,
    ) -> BoxFuture<'_, Result<Vec<(i64, InvocationRecord)>>>;

    /// Store a policy as the new current version; returns its version.
    fn policy_put(&self, name: &str, text: &str, time_ms: i64) -> BoxFuture<'_, Result<i64>>;

    /// The current policy, if one was stored.
    fn policy_current(&self) -> BoxFuture<'_, Result<Option<StoredPolicy>>>;

    /// Start an idempotent request: record `key` as running with
    /// `fingerprint` unless it is known. A running entry older than
    /// `stale_before_ms` was abandoned (its process died) and is taken over;
    /// entries past their expiry are forgotten. Atomic.
    fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expires_ms: i64,
        stale_before_ms: i64,
    ) -> BoxFuture<'_, Result<IdempotencyBegin>>;

    /// Forget a running key (the request failed before it produced an
    /// answer to keep).
    fn idempotency_abandon(&self, tenant: &str, key: &str) -> BoxFuture<'_, Result<()>>;

    /// Finish a key outside an audit batch.
    fn idempotency_finish(&self, done: IdempotencyDone) -> BoxFuture<'_, Result<()>>;

    /// An approval request.
    fn approval_get(&self, tenant: &str, id: &str)
    -> BoxFuture<'_, Result<Option<ApprovalRecord>>>;

    /// A tenant's approval requests with an effective status as of `now_ms`
    /// (all when `None`), newest first: `pending` is stored pending and not
    /// yet expired, `expired` stored pending past `expires_ms`, `approved`
    /// and `denied` as stored. Filtering happens in storage, so a page is
    /// never short because of rows it skipped. Ordered by `(created_ms,
    /// id)` descending; `before` continues after that position.
    fn approval_list(
        &self,
        tenant: &str,
        status: Option<&str>,
        now_ms: i64,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>>;

    /// Decide a pending, unexpired request: set `status` if and only if it
    /// is still pending and `now_ms < expires_ms`, atomically (of two
    /// concurrent decisions exactly one wins), and erase its stored
    /// arguments. Returns the decided record (arguments erased), or `None`
    /// when it was not pending (or had expired).
    fn approval_decide(
        &self,
        tenant: &str,
        id: &str,
        status: &str,
        decided_by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<ApprovalRecord>>>;

    /// A cached result, if present and not expired.
    fn cache_get(
        &self,
        tenant: &str,
        key: &str,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<String>>>;

    /// A small named value (keys, settings).
    fn meta_get(&self, key: &str) -> BoxFuture<'_, Result<Option<String>>>;

    /// Set a named value if it is not set yet; returns the value that is set.
    fn meta_init(&self, key: &str, value: &str) -> BoxFuture<'_, Result<String>>;

    /// Whether the backend can read and durably write now (`/readyz`):
    /// an error says why not (a stopped writer, a failed fsync, a lost
    /// connection). Cheap enough for a load balancer's probe.
    fn health(&self) -> BoxFuture<'_, Result<()>>;
}
