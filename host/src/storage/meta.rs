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
    /// Whether this process leads `role` now: work one host of a fleet
    /// does at a time (the reaper's sweep of other hosts' expired rows,
    /// audit retention). Embedded backends: always (every move they make is
    /// conditional and their writes serialise). PostgreSQL: a session
    /// advisory lock per role, held while its connection lives, so a dead
    /// leader's role passes to the next host that asks.
    fn lead(&self, _role: &str) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(true) })
    }
}
