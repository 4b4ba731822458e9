//! The outbox: messages to deliver after a commit (approval callbacks),
//! written in the transaction that decides them and delivered at least
//! once, with retries, by whichever host claims them.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
use serde::Serialize;

/// A message to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxMessage {
    /// Assigned by the store (0 when new).
    pub id: i64,
    pub tenant: TenantId,
    /// The invocation whose outcome it reports.
    pub invocation_id: InvocationId,
    /// The approval it concerns.
    pub approval_id: Option<ApprovalId>,
    pub url: String,
    pub created_ms: i64,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// `pending`, `delivered`, `failed` (gave up).
    pub state: String,
    pub last_error: Option<String>,
    pub delivered_ms: Option<i64>,
}

impl OutboxMessage {
    /// A new message (pending, not yet attempted) reporting the outcome of
    /// `invocation_id`, which waited for `approval_id`, to `url`.
    pub fn new(
        tenant: &TenantId,
        invocation_id: &InvocationId,
        approval_id: &ApprovalId,
        url: &str,
        created_ms: i64,
    ) -> OutboxMessage {
        OutboxMessage {
            id: 0,
            tenant: tenant.clone(),
            invocation_id: invocation_id.clone(),
            approval_id: Some(approval_id.clone()),
            url: url.to_string(),
            created_ms,
            attempts: 0,
            state: "pending".into(),
            last_error: None,
            delivered_ms: None,
        }
    }
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// Try again at `next_ms`.
    Retry { next_ms: i64, error: String },
    /// Give up.
    Failed { error: String },
}

/// The outbox.
pub trait OutboxStore: Send + Sync {
    /// Claim up to `limit` pending messages due by `now_ms` whose claim (if
    /// any) expired: each is leased to `owner` until `lease_until`.
    fn outbox_claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<OutboxMessage>>>;

    /// Record an attempt on a message `owner` claimed (ignored if the claim
    /// was lost).
    fn outbox_attempt(
        &self,
        id: i64,
        owner: &str,
        now_ms: i64,
        attempt: Attempt,
    ) -> BoxFuture<'_, Result<()>>;

    /// Delete delivered or failed messages created before `before_ms`;
    /// returns how many.
    fn outbox_sweep(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>>;

    /// The messages about an invocation.
    fn outbox_for(
        &self,
        tenant: &str,
        invocation_id: &str,
    ) -> BoxFuture<'_, Result<Vec<OutboxMessage>>>;
}
