//! Idempotency keys and their answers.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

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

/// Idempotency keys and their answers.
pub trait IdempotencyStore: Send + Sync {
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
}
