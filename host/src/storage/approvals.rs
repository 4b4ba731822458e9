//! Human-approval requests.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// An approval request's status. `expired` is stored once the reaper
/// finishes a request; a stored `pending` past its expiry is expired too
/// ([`effective_status`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Withdrawn by its requester before anyone decided it.
    Withdrawn,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 5] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Denied,
        ApprovalStatus::Expired,
        ApprovalStatus::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Withdrawn => "withdrawn",
        }
    }

    /// The status a stored name means (`None`: no status has that name).
    pub fn parse(s: &str) -> Option<ApprovalStatus> {
        ApprovalStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A human-approval request: the decision packet, and the call to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    /// `apr_…`.
    pub id: ApprovalId,
    pub tenant: TenantId,
    /// The invocation that waits (its record is `pending_approval`).
    pub invocation_id: InvocationId,
    /// `pending`, `approved` (and run), `denied`, `withdrawn` (by its
    /// requester), `expired` (finished by the reaper); a stored `pending`
    /// past `expires_ms` is expired too.
    pub status: ApprovalStatus,
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

/// A decision on an approval request, applied in a
/// [`crate::storage::Work`]: only if the request is still pending and (for
/// `approved`/`denied`) not expired, or (for `expired`) expired — so of two
/// concurrent decisions exactly one wins. Its stored arguments are erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub tenant: TenantId,
    pub approval_id: ApprovalId,
    /// `approved`, `denied`, `withdrawn` or `expired`.
    pub status: ApprovalStatus,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub now_ms: i64,
    /// Approved: the waiting invocation's row becomes running (unadmitted)
    /// under this owner and lease, in the same transaction.
    pub run: Option<(String, i64)>,
}

/// The effective status of a request as of `now_ms`: a pending one past its
/// expiry is `expired`. The one rule every backend and reader applies.
pub fn effective_status(a: &ApprovalRecord, now_ms: i64) -> ApprovalStatus {
    if a.status == ApprovalStatus::Pending && now_ms >= a.expires_ms {
        ApprovalStatus::Expired
    } else {
        a.status
    }
}

/// Whether `decision` may be applied to a request now `status` (as stored)
/// that expires at `expires_ms`.
pub fn may_decide(decision: &Decision, status: ApprovalStatus, expires_ms: i64) -> bool {
    status == ApprovalStatus::Pending
        && match decision.status {
            ApprovalStatus::Expired => decision.now_ms >= expires_ms,
            _ => decision.now_ms < expires_ms,
        }
}

/// Human-approval requests.
pub trait ApprovalStore: Send + Sync {
    /// An approval request.
    fn approval_get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> BoxFuture<'_, Result<Option<ApprovalRecord>>>;
    /// A tenant's approval requests with an effective status as of `now_ms`
    /// (all when `None`), newest first: `pending` is stored pending and not
    /// yet expired, `expired` stored pending past `expires_ms`, `approved`
    /// and `denied` as stored. Filtering happens in storage, so a page is
    /// never short because of rows it skipped. Ordered by `(created_ms,
    /// id)` descending; `before` continues after that position.
    fn approval_list(
        &self,
        tenant: &TenantId,
        status: Option<ApprovalStatus>,
        now_ms: i64,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>>;

    /// Requests still stored `pending` whose expiry passed by `now_ms`, of
    /// any tenant, oldest first (for the reaper to finish).
    fn approvals_due(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>>;
}

impl ApprovalRecord {
    /// What approvers see of it as of `now_ms`: the effective status, the
    /// redacted arguments (never the ones to run with).
    pub fn view(&self, now_ms: i64) -> serde_json::Value {
        use serde_json::{Value, json};
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        v["status"] = json!(effective_status(self, now_ms));
        v["args"] = serde_json::from_str(&self.args_redacted).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("args_redacted");
        }
        v
    }
}
