//! Stored policy versions.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// A policy as stored: each `policy_put` is a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredPolicy {
    pub version: i64,
    /// Where it came from (a file name).
    pub name: String,
    pub text: String,
    pub created_ms: i64,
}

/// Stored policy versions.
pub trait PolicyStore: Send + Sync {
    /// Store a policy as the new current version; returns its version.
    fn policy_put(&self, name: &str, text: &str, time_ms: i64) -> BoxFuture<'_, Result<i64>>;
    /// The current policy, if one was stored.
    fn policy_current(&self) -> BoxFuture<'_, Result<Option<StoredPolicy>>>;
}
