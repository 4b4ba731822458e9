//! Invocation records: one row per invocation, from admission to its end.

#[allow(unused_imports)]
use super::*;
use crate::BoxFuture;
use crate::error::Result;
#[allow(unused_imports)]
use serde::Serialize;

/// A finished (or refused) invocation, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationRecord {
    pub id: String,
    pub tenant: String,
    pub tool: String,
    pub function: String,
    /// The tool version that ran (registered tools only).
    pub version: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    pub principal: Option<String>,
    /// `ok`, `error` (the tool ran and failed) or `refused` (it never ran).
    pub status: String,
    pub error_kind: Option<String>,
    pub created_ms: i64,
    /// The response body (JSON) the caller was given.
    pub response: String,
}

/// Which invocation records to list: newest first.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub tool: Option<String>,
    pub status: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    /// Only records older than this position (from a previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// Invocation records: one row per invocation, from admission to its end.
pub trait InvocationStore: Send + Sync {
    /// One of a tenant's invocation records.
    fn invocation_get(
        &self,
        tenant: &str,
        id: &str,
    ) -> BoxFuture<'_, Result<Option<InvocationRecord>>>;
    /// A tenant's invocation records, newest first, each with its position
    /// (for [`InvocationFilter::before`]).
    fn invocation_list(
        &self,
        tenant: &str,
        filter: InvocationFilter,
    ) -> BoxFuture<'_, Result<Vec<(i64, InvocationRecord)>>>;
}
