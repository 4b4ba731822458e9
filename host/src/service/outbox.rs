//! Delivering the outbox: approval callbacks, at least once.
//!
//! A message is written in the transaction that decides what it reports
//! (an approved call's end, a denial, an expiry, a lost host). Any host may
//! deliver it: [`InvocationService::deliver_outbox`] claims due messages
//! with a lease (so two hosts do not send the same one at once), builds the
//! body from what is stored now (`{"approval": ..., "invocation": ...}`),
//! POSTs it through the vetted callback client, and records the attempt:
//! delivered on a 2xx, else retried with exponential backoff (1 s, 2 s, 4 s
//! ... at most 10 min apart) up to [`MAX_ATTEMPTS`], then failed. A host that
//! dies mid-send leaves its claim to expire, and another sends again: a
//! receiver may see a message twice and should dedupe by invocation id.

use super::InvocationService;
use crate::callback::Callbacks;
use crate::error::Result;
use crate::storage::{Attempt, OutboxMessage};
use serde_json::json;
use std::time::Duration;

/// How often due messages are looked for.
pub const POLL: Duration = Duration::from_millis(500);

/// Attempts before a message is given up.
pub const MAX_ATTEMPTS: i64 = 12;

/// How long a claim holds: longer than one attempt's deadline, and a
/// claimed batch is sent all at once, so the batch ends within it too (a
/// batch sent one message after another could outlast its claim, and
/// another host would send the rest again).
const CLAIM_MS: i64 = 30_000;

/// Messages claimed (and sent at once) per round.
const BATCH: i64 = 16;

/// The delay before attempt `n + 1` after `n` failed.
pub fn backoff_ms(attempts: i64) -> i64 {
    (1000_i64 << attempts.clamp(0, 20)).min(600_000)
}

impl InvocationService {
    /// The callback allowlist messages are checked against when sent.
    pub fn set_callbacks(&self, callbacks: Callbacks) {
        *self.callbacks.lock().unwrap_or_else(|e| e.into_inner()) = callbacks;
    }

    /// Deliver the messages that are due; returns how many were attempted.
    pub async fn deliver_outbox(&self) -> Result<usize> {
        let Some(keys) = self.keys() else {
            return Ok(0);
        };
        let storage = keys.audit.storage().clone();
        let now = self.instance.now_ms();
        let claimed = storage
            .outbox_claim(&self.instance.id, now, now + CLAIM_MS, BATCH)
            .await?;
        let n = claimed.len();
        // All at once: one slow receiver delays neither the others nor the
        // batch past its claim.
        let attempts = futures_util::future::join_all(
            claimed
                .iter()
                .map(|m| async move { (m, self.attempt(m).await) }),
        )
        .await;
        let mut failed = None;
        for (m, attempt) in attempts {
            let now = self.instance.now_ms();
            match &attempt {
                Attempt::Delivered { status } => {
                    tracing::info!(url = %m.url, status, invocation_id = %m.invocation_id, "callback delivered")
                }
                Attempt::Retry { error, .. } | Attempt::Failed { error } => {
                    tracing::warn!(url = %m.url, invocation_id = %m.invocation_id, attempts = m.attempts + 1, "callback failed: {error}")
                }
            }
            // Every attempt is recorded, whatever happened to the one
            // before: a message sent but not recorded is sent again.
            if let Err(e) = storage
                .outbox_attempt(m.id, &self.instance.id, now, attempt)
                .await
            {
                tracing::warn!(invocation_id = %m.invocation_id, "recording a callback attempt: {}", e.message);
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    async fn attempt(&self, m: &OutboxMessage) -> Attempt {
        let keys = self.keys().expect("the outbox runs with a store");
        let storage = keys.audit.storage();
        let now = self.instance.now_ms();
        let retry = |error: String| {
            if m.attempts + 1 >= MAX_ATTEMPTS {
                Attempt::Failed { error }
            } else {
                Attempt::Retry {
                    next_ms: now + backoff_ms(m.attempts),
                    error,
                }
            }
        };
        let approval = match &m.approval_id {
            Some(id) => match storage.approval_get(&m.tenant, id).await {
                Ok(a) => a.map(|a| a.view(now)),
                Err(e) => return retry(e.message),
            },
            None => None,
        };
        let invocation = match storage.invocation_get(&m.tenant, &m.invocation_id).await {
            Ok(Some(r)) => serde_json::from_str::<serde_json::Value>(&r.response).ok(),
            Ok(None) => None,
            Err(e) => return retry(e.message),
        };
        let body = json!({ "approval": approval, "invocation": invocation });
        let callbacks = self
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match callbacks.post(&m.url, &body).await {
            Ok(status) if (200..300).contains(&status) => Attempt::Delivered { status },
            Ok(status) => retry(format!("the receiver answered {status}")),
            // Not allowed (any more): retrying cannot help.
            Err(e) if e.kind == crate::ErrorKind::Forbidden => Attempt::Failed { error: e.message },
            Err(e) => retry(e.message),
        }
    }
}
