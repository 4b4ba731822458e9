//! Idempotency keys and their answers.
//!
//! A key's row points at the invocation it started; whether that
//! invocation still runs is its row's business (owner, lease, reaper), so
//! no clock guesses when a first request "must" have died.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// The final response of an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyDone {
    pub tenant: TenantId,
    pub key: String,
    /// The invocation that answers it: the key is answered only while it
    /// still points at this invocation.
    pub invocation_id: InvocationId,
    /// The answer ([`crate::record::InvocationResponse`] JSON); each
    /// transport derives its own status from it.
    pub response: String,
}

/// Starting a keyed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBegin {
    pub tenant: TenantId,
    pub key: String,
    pub fingerprint: String,
    pub now_ms: i64,
    /// When the key and its answer are forgotten.
    pub expires_ms: i64,
    /// The invocation to start (running, unadmitted) if the key is new.
    pub run: NewRun,
}

/// What starting an idempotent request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key is new (or its earlier use expired, or ended before its
    /// invocation ran): the invocation row was written; run it.
    Started,
    /// Done before with the same fingerprint: answer this again.
    Replay { response: String },
    /// Used before with another request.
    Mismatch,
    /// The first request with this key is still running (or its host was
    /// lost and the reaper has not finished it yet).
    InProgress,
}

/// A stored key, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub fingerprint: String,
    pub expires_ms: i64,
    pub answer: Option<String>,
    /// The state of the invocation it started (`None`: no such row).
    pub invocation: Option<String>,
}

/// A stored key's answer from its `state` and `response` columns: `None`
/// while it runs, the answer once done. Anything else is not a row this
/// host wrote (an unknown state would read as running until it expired; a
/// done key without its answer would replay nothing): an error.
pub fn stored_answer(
    state: &str,
    response: Option<String>,
) -> std::result::Result<Option<String>, String> {
    match (state, response) {
        ("running", _) => Ok(None),
        ("done", Some(answer)) => Ok(Some(answer)),
        ("done", None) => Err("a done idempotency key has no stored answer".into()),
        (other, _) => Err(format!("unknown idempotency key state {other:?}")),
    }
}

/// The idempotency state machine, shared by every backend: what a keyed
/// request with `fingerprint` gets, given the stored key (`None`: none).
pub fn decide(stored: Option<&KeyRow>, fingerprint: &str, now_ms: i64) -> IdempotencyBegin {
    let Some(k) = stored.filter(|k| k.expires_ms > now_ms) else {
        return IdempotencyBegin::Started;
    };
    if k.fingerprint != fingerprint {
        return IdempotencyBegin::Mismatch;
    }
    if let Some(response) = &k.answer {
        return IdempotencyBegin::Replay {
            response: response.clone(),
        };
    }
    match k.invocation.as_deref() {
        // Its invocation was forgotten before it ran: start over.
        None => IdempotencyBegin::Started,
        Some(_) => IdempotencyBegin::InProgress,
    }
}

/// Idempotency keys and their answers.
pub trait IdempotencyStore: Send + Sync {
    /// Start a keyed request, atomically: [`decide`] on the stored key;
    /// on [`IdempotencyBegin::Started`], store the key (pointing at
    /// `begin.run`) and write `begin.run` as a running, unadmitted row.
    /// Keys past their expiry are forgotten.
    fn idempotency_begin(&self, begin: KeyBegin) -> BoxFuture<'_, Result<IdempotencyBegin>>;
}
