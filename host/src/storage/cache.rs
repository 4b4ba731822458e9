//! The result cache.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// A cached result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub tenant: TenantId,
    pub key: String,
    /// The result JSON.
    pub result: String,
    pub expires_ms: i64,
}

/// The result cache.
pub trait CacheStore: Send + Sync {
    /// A cached result, if present and not expired.
    fn cache_get(
        &self,
        tenant: &TenantId,
        key: &str,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<String>>>;

    /// Delete entries expired by `now_ms`; returns how many.
    fn cache_sweep(&self, now_ms: i64) -> BoxFuture<'_, Result<u64>>;
}
