//! The tool registry: content-addressed blobs, immutable versions, names.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// One immutable version of a registered tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ToolVersion {
    pub tenant: TenantId,
    pub name: String,
    pub version: String,
    /// SHA-256 of the component bytes (the blob key).
    pub digest: String,
    /// The `package-docs` section the tool was registered with, if any.
    #[serde(skip)]
    pub docs: Option<Vec<u8>>,
    /// Blob key of the precompiled artifact, and the engine it is for.
    pub artifact: Option<String>,
    pub engine: Option<String>,
    /// The function signatures, for listing without loading.
    pub functions: Vec<String>,
    pub created_ms: i64,
}

/// A tool name: which version it points at, and whether it is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ToolEntry {
    pub tenant: TenantId,
    pub name: String,
    pub current: String,
    pub disabled: bool,
    pub updated_ms: i64,
}

/// What registering a version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new version was stored.
    Created,
    /// The same bytes were already registered under this version.
    Exists,
    /// The version exists with other bytes (versions are immutable).
    Conflict { digest: String },
}

/// The tool registry: content-addressed blobs, immutable versions, names.
pub trait RegistryStore: Send + Sync {
    /// Store bytes under their SHA-256 (idempotent).
    fn blob_put<'a>(&'a self, digest: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>>;
    /// The bytes stored under a digest.
    fn blob_get(&self, digest: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>>>;
    /// Register a version (immutable once stored); with `deploy`, point the
    /// name at it (creating the name if needed).
    fn tool_register(
        &self,
        version: ToolVersion,
        deploy: bool,
    ) -> BoxFuture<'_, Result<Registered>>;
    /// A version of a tool.
    fn tool_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> BoxFuture<'_, Result<Option<ToolVersion>>>;
    /// All versions of a tool, oldest first.
    fn tool_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> BoxFuture<'_, Result<Vec<ToolVersion>>>;
    /// A tool name's entry.
    fn tool_get(&self, tenant: &TenantId, name: &str) -> BoxFuture<'_, Result<Option<ToolEntry>>>;
    /// A tenant's tools, by name.
    fn tool_list(&self, tenant: &TenantId) -> BoxFuture<'_, Result<Vec<ToolEntry>>>;
    /// Re-point a name at an existing version and/or (dis)able it. Returns
    /// false when the tool or version does not exist.
    fn tool_update(
        &self,
        tenant: &TenantId,
        name: &str,
        version: Option<&str>,
        disabled: Option<bool>,
    ) -> BoxFuture<'_, Result<bool>>;
    /// Record a (re)built precompiled artifact for a version.
    fn tool_set_artifact(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
        artifact: &str,
        engine: &str,
    ) -> BoxFuture<'_, Result<()>>;
}
