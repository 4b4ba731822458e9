//! Small named values (the pinned audit key, settings) and the backend's health.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// Small named values (the pinned audit key, settings) and the backend's health.
pub trait MetaStore: Send + Sync {
    /// A small named value (keys, settings).
    fn meta_get(&self, key: &str) -> BoxFuture<'_, Result<Option<String>>>;
    /// Set a named value if it is not set yet; returns the value that is set.
    fn meta_init(&self, key: &str, value: &str) -> BoxFuture<'_, Result<String>>;
    /// Whether the backend can read and durably write now (`/readyz`):
    /// an error says why not (a stopped writer, a failed fsync, a lost
    /// connection). Cheap enough for a load balancer's probe.
    fn health(&self) -> BoxFuture<'_, Result<()>>;
}
