//! `tools/list`: the tenant's functions as MCP tools.
//!
//! One MCP tool per function, named and described exactly as
//! `GET /v1/tools?format=mcp` does ([`schema::mcp_tool`] renamed to
//! [`schema::llm_name`], `<tool>__<function>`), plus:
//!
//! * `outputSchema`: the WIT result's JSON Schema (any type; rmcp drops a
//!   non-object schema for clients before 2026-07-28, which allow only
//!   objects there);
//! * `annotations` the policy in force can vouch for: a function that may
//!   need a human's approval is `readOnlyHint: false, destructiveHint:
//!   true`; a function with no outbound grant (no HTTP, no sockets) is
//!   `openWorldHint: false` (the sandbox denies the rest), and `readOnlyHint:
//!   true` if it has no writable file grant either (it can change nothing
//!   outside itself); a function whose results the policy caches is
//!   `idempotentHint: true`. Nothing is claimed otherwise.
//!
//! The list is sorted by name (a stable order) and paged: the cursor is the
//! last name of the previous page, so a tool registered or removed between
//! pages neither repeats nor hides the others.

use crate::policy::{Policy, tool_settings};
use crate::schema;
use crate::tool::{FunctionInfo, Tool};
use base64::Engine;
use rmcp::ErrorData as McpError;
use rmcp::model::{CacheScope, ListToolsResult, Tool as McpTool, ToolAnnotations};
use serde_json::Value;
use std::sync::Arc;

/// Tools per `tools/list` page.
pub const PAGE_SIZE: usize = 100;

/// Every function of `tools` as an MCP tool, sorted by name.
pub fn definitions(tools: &[(String, Arc<Tool>)], policy: &Policy, tenant: &str) -> Vec<McpTool> {
    let doc = policy.document(Some(tenant), policy.default_workflow());
    let mut out = Vec::new();
    for (name, tool) in tools {
        for f in &tool.catalog().functions {
            let definition = schema::renamed(schema::mcp_tool(f), &schema::llm_name(name, f));
            let Ok(mut t) = serde_json::from_value::<McpTool>(definition) else {
                continue;
            };
            // A function returning MCP content is answered in content
            // blocks, not structured content.
            if super::answer::returns_content(f) {
                t.output_schema = None;
            } else if f.result.is_some()
                && let Value::Object(output) = schema::result(f)
            {
                t.output_schema = Some(Arc::new(output));
            }
            if let Some(doc) = doc {
                t.annotations = annotations(doc, name, f);
            }
            out.push(t);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What the governing document says about a function, as MCP hints.
fn annotations(
    doc: &crate::policy::file::Document,
    tool: &str,
    f: &FunctionInfo,
) -> Option<ToolAnnotations> {
    let mut a = ToolAnnotations::new();
    let settings = tool_settings(doc, tool, f);
    let outbound = settings.is_some_and(|s| !s.http.is_empty() || !s.sockets.is_empty());
    let writes_files = settings.is_some_and(|s| {
        s.files
            .iter()
            .any(|g| matches!(g.mode, crate::policy::file::FileMode::Rw))
    });
    if needs_approval(doc, tool, f) {
        a = a.read_only(false).destructive(true);
    } else if !outbound && !writes_files {
        a = a.read_only(true);
    }
    if !outbound {
        a = a.open_world(false);
    }
    if settings.is_some_and(|s| s.cache.is_some()) {
        a = a.idempotent(true);
    }
    (a != ToolAnnotations::new()).then_some(a)
}

/// Whether an approval rule of `doc` names this function (by function name,
/// `tool/function`, or the tool's name): some calls, or all, wait for a
/// human.
pub fn needs_approval(doc: &crate::policy::file::Document, tool: &str, f: &FunctionInfo) -> bool {
    let n = crate::policy::normalize;
    let tool = n(tool);
    let bare = n(&f.function);
    let path = n(&f.name);
    let forms = [
        bare.clone(),
        path.clone(),
        format!("{tool}/{path}"),
        format!("{tool}/{bare}"),
        tool.clone(),
    ];
    doc.approval
        .required_for
        .iter()
        .any(|r| forms.contains(&n(&r.tool)))
}

/// One page of `all`, after the cursor's name.
pub fn page(
    all: Vec<McpTool>,
    cursor: Option<&str>,
    size: usize,
) -> Result<ListToolsResult, McpError> {
    let after = match cursor {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            McpError::invalid_params(
                "invalid cursor: pass the nextCursor of the previous tools/list page",
                None,
            )
        })?),
    };
    let start = match &after {
        None => 0,
        Some(name) => all.partition_point(|t| t.name.as_ref() <= name.as_str()),
    };
    let mut tools: Vec<McpTool> = all.into_iter().skip(start).collect();
    let more = tools.len() > size;
    tools.truncate(size);
    let next = more
        .then(|| tools.last().map(|t| encode_cursor(&t.name)))
        .flatten();
    let mut result = ListToolsResult::with_all_items(tools)
        // A tool registered, deployed or disabled shows on the next list;
        // the list is the caller's tenant's own.
        .with_ttl_ms(0)
        .with_cache_scope(CacheScope::Private);
    result.next_cursor = next;
    Ok(result)
}

fn encode_cursor(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("after:{name}"))
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("after:")
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(n: usize) -> Vec<McpTool> {
        (0..n)
            .map(|i| McpTool::new(format!("t__f{i:03}"), "d", Arc::new(serde_json::Map::new())))
            .collect()
    }

    #[test]
    fn pages_follow_the_cursor_without_repeats_or_gaps() {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = page(tools(250), cursor.as_deref(), 100).unwrap();
            seen.extend(page.tools.iter().map(|t| t.name.to_string()));
            assert_eq!(page.ttl_ms, Some(0));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 250);
        let mut sorted = seen.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 250);
        assert!(page(tools(3), Some("not a cursor!"), 100).is_err());
        assert!(page(tools(100), None, 100).unwrap().next_cursor.is_none());
    }
}
