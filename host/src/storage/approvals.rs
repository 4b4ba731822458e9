//! Human-approval requests.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

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

/// Human-approval requests.
pub trait ApprovalStore: Send + Sync {
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
}
