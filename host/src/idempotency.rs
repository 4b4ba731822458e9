//! Idempotency keys (the IETF httpapi `Idempotency-Key` draft, as Stripe
//! does it): a retried request with the same key gets the first answer
//! again, without a second execution or charge.
//!
//! * Keys are scoped per tenant. The request's fingerprint is the SHA-256 of
//!   the canonical JSON of tool, function, arguments, workflow and task.
//! * [`begin`] records the key as running (atomically). Same key, same
//!   fingerprint, done: the stored answer ([`Begin::Replay`]); different
//!   fingerprint: [`ErrorKind::IdempotencyKeyReused`]; still running:
//!   [`ErrorKind::IdempotencyInProgress`].
//! * The key points at the invocation it started, a running row with an
//!   owner and a lease. The gate stores the final answer in the same
//!   transaction as the invocation's audit record
//!   (`CallContext::idempotency_key`), so a crash can never leave an executed
//!   call without its answer. If the host running it dies, the reaper
//!   finishes the invocation (`host_lost`, answered to retries) or, if it
//!   never ran, forgets it and its key (a retry runs it). No clock guesses.
//! * Answers are kept for the retention window (default 24 h), then
//!   forgotten; they are the caller's full answer (unredacted), so that a
//!   retry gets exactly what the first request got.

use crate::audit::canonical;
use crate::error::{Error, ErrorKind, Result};
use crate::invoke::InvocationResponse;
use crate::storage::{IdempotencyBegin, KeyBegin, NewRun, Storage};
use serde_json::json;
use std::time::Duration;

/// How long answers are kept, by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Check a key: 1 to 255 visible ASCII characters.
pub fn validate_key(key: &str) -> Result<()> {
    if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidRequest,
            "an Idempotency-Key must be 1 to 255 visible ASCII characters",
        ))
    }
}

/// The fingerprint of a request: what a retry under the same key must
/// repeat. A `callback_url` counts when there is one (a retry that asks for
/// the outcome elsewhere is another request, not silently the first); a
/// request without one fingerprints as before callbacks counted.
pub fn fingerprint(
    tool: &str,
    function: &str,
    args: &serde_json::Value,
    workflow: Option<&str>,
    task_id: Option<&str>,
    callback_url: Option<&str>,
) -> String {
    let mut request = json!({
        "tool": tool,
        "function": function,
        "args": args,
        "workflow": workflow,
        "task_id": task_id,
    });
    if let Some(url) = callback_url {
        request["callback_url"] = json!(url);
    }
    canonical::fingerprint(&request)
}

/// What to do with a keyed request.
#[derive(Debug)]
pub enum Begin {
    /// Run it (the key is now marked running).
    Run,
    /// Answer this again.
    Replay(Box<InvocationResponse>),
}

/// Start a keyed request: the key is stored pointing at `run` (written as
/// a running row, not yet admitted) unless it is known.
pub async fn begin(
    storage: &dyn Storage,
    key: &str,
    fingerprint: &str,
    retention: Duration,
    run: NewRun,
) -> Result<Begin> {
    validate_key(key)?;
    let now = run.created_ms;
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let answer = storage
        .idempotency_begin(KeyBegin {
            tenant: run.tenant.clone(),
            key: key.to_string(),
            fingerprint: fingerprint.to_string(),
            now_ms: now,
            expires_ms: now.saturating_add(ms(retention)),
            run,
        })
        .await?;
    match answer {
        IdempotencyBegin::Started => Ok(Begin::Run),
        IdempotencyBegin::Replay { response } => {
            let response = serde_json::from_str(&response).map_err(|e| {
                Error::corrupt(format!(
                    "the stored answer for this key does not parse: {e}"
                ))
            })?;
            Ok(Begin::Replay(Box::new(response)))
        }
        IdempotencyBegin::Mismatch => Err(Error::new(
            ErrorKind::IdempotencyKeyReused,
            "this Idempotency-Key was used for a different request (tool, function, arguments, workflow or task); use a new key",
        )),
        IdempotencyBegin::InProgress => Err(Error::new(
            ErrorKind::IdempotencyInProgress,
            "the first request with this Idempotency-Key is still running; retry later",
        )),
    }
}
