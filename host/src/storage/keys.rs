//! API keys (stored as hashes).

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// An API key as stored: the secret part only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    /// The public id (the `thk_<id>_` prefix of the key).
    pub id: KeyId,
    pub tenant: TenantId,
    /// `invoke`, `approve`, `admin`, `audit`.
    pub roles: Vec<String>,
    /// SHA-256 (hex) of the key's secret part.
    #[serde(skip_serializing)]
    pub hash: String,
    pub label: Option<String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// API keys (stored as hashes).
pub trait KeyStore: Send + Sync {
    /// Store a new API key.
    fn key_put(&self, key: ApiKeyRecord) -> BoxFuture<'_, Result<()>>;
    /// An API key by id.
    fn key_get(&self, id: &KeyId) -> BoxFuture<'_, Result<Option<ApiKeyRecord>>>;
    /// All keys (of one tenant, or of all).
    fn key_list(&self, tenant: Option<&TenantId>) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>>>;
    /// Revoke a key; returns false when there is no such active key.
    fn key_revoke(&self, id: &KeyId, time_ms: i64) -> BoxFuture<'_, Result<bool>>;
}
