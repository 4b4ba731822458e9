//! An invocation's answer as an MCP `CallToolResult`.
//!
//! | answer | `isError` | content | `structuredContent` |
//! |---|---|---|---|
//! | ran, returned a value | false | the value as JSON text | the value |
//! | ran, returned `list<content-block>` (`toolhost:tool/content`) | false | those blocks (text, image, audio, resource, resource link) | — |
//! | ran, returned a WIT `result`'s `err` | true | `tool_error: ...` and the value | the value (`{"err": ...}`) |
//! | ran and failed (fuel, timeout, trap, ...) | true | `<kind>: <message>` and what to do | — |
//! | refused (policy, budget, arguments, ...) | true | `<kind>: <message>` and what to do | — |
//! | waits for a human's approval | true | `approval_required`, the approval id, how to get the outcome | — |
//!
//! Every result carries `_meta["io.toolhost/invocation"]`: the invocation
//! id, its status, the error kind and approval id when there are, whether
//! it was a cached result, and its usage — the same facts as the
//! invocation record (`GET /v1/invocations/{id}`).

use crate::error::{Error, ErrorKind};
use crate::record::{InvocationResponse, Status};
use crate::tool::{FunctionInfo, Tool, Ty};
use rmcp::model::{CallToolResult, ContentBlock as Content, MetaObject as Meta};
use serde_json::{Value, json};

/// The `_meta` key of the invocation's facts on every result.
pub const META_INVOCATION: &str = "io.toolhost/invocation";

/// The result of an invocation the service answered.
pub fn result(tool: &Tool, r: &InvocationResponse) -> CallToolResult {
    result_of(function(tool, &r.function), r)
}

/// The result of an invocation of `function` (its WIT signature decides
/// content blocks and what is a WIT `err`; `None`: the tool can no longer
/// be loaded, and a value is shown as JSON).
pub fn result_of(function: Option<&FunctionInfo>, r: &InvocationResponse) -> CallToolResult {
    let mut out = match r.status {
        Status::Ok => {
            let value = r.result.clone().unwrap_or(Value::Null);
            let text = serde_json::to_string(&value).unwrap_or_default();
            let blocks = function
                .filter(|f| returns_content(f))
                .and_then(|_| content_blocks(&value));
            if let Some(blocks) = blocks {
                CallToolResult::success(blocks)
            } else if is_wit_err(function, &value) {
                let mut c = CallToolResult::error(vec![Content::text(format!(
                    "tool_error: `{}` returned an error (its WIT result's `err`): {text}\n\
                     What to do: this is the tool's own answer; read it, and change the \
                     request before calling again.",
                    r.function
                ))]);
                c.structured_content = Some(value);
                c
            } else {
                let mut c = CallToolResult::success(vec![Content::text(text)]);
                c.structured_content = Some(value);
                c
            }
        }
        Status::PendingApproval => CallToolResult::error(vec![Content::text(pending_text(r))]),
        Status::Error | Status::Refused | Status::Running => {
            let e = r.error.clone().unwrap_or_else(|| {
                Error::internal(format!("the invocation ended as {}", r.status.as_str()))
            });
            CallToolResult::error(vec![Content::text(format!(
                "{}\n(invocation {})",
                error_text(&e),
                r.invocation_id
            ))])
        }
    };
    let mut facts = json!({
        "invocation_id": r.invocation_id,
        "status": r.status.as_str(),
        "tool": r.tool,
        "function": r.function,
        "usage": r.usage,
    });
    if let Some(v) = &r.version {
        facts["version"] = json!(v);
    }
    if let Some(e) = &r.error {
        facts["kind"] = json!(e.kind.as_str());
    }
    if let Some(a) = &r.approval_id {
        facts["approval_id"] = json!(a);
    }
    if r.cached {
        facts["cached"] = json!(true);
    }
    let mut meta = Meta::new();
    meta.0.insert(META_INVOCATION.into(), facts);
    out.meta = Some(meta);
    out
}

/// A call the service could not answer with an invocation (an
/// idempotency conflict, storage unavailable, a host fault).
pub fn failed(e: &Error) -> CallToolResult {
    let mut out = CallToolResult::error(vec![Content::text(error_text(e))]);
    let mut meta = Meta::new();
    meta.0.insert(
        META_INVOCATION.into(),
        json!({"status": "refused", "kind": e.kind.as_str()}),
    );
    out.meta = Some(meta);
    out
}

/// `<kind>: <message>` and what the agent should do about it.
pub fn error_text(e: &Error) -> String {
    format!(
        "{}: {}\nWhat to do: {}",
        e.kind.as_str(),
        e.message,
        advice(e.kind)
    )
}

fn pending_text(r: &InvocationResponse) -> String {
    let approval = r.approval_id.as_deref().unwrap_or("(unknown)");
    format!(
        "approval_required: `{}` needs a human's approval before it runs; it has NOT run. \
         Approval request: {approval}; invocation: {}.\n\
         What to do: tell the user that approval {approval} is waiting (an approver decides it \
         with `POST /v1/approvals/{approval}/approve` or `/deny`, `host approvals`, or the \
         console). Once it is decided, the call runs once by itself (or is refused); its outcome \
         is the invocation record `GET /v1/invocations/{}` (same API key). Do not call the tool \
         again for the same request: that asks for a second approval.",
        r.function, r.invocation_id, r.invocation_id
    )
}

/// What to do about an error of this kind.
pub fn advice(kind: ErrorKind) -> &'static str {
    use ErrorKind::*;
    match kind {
        InvalidArgs => {
            "fix the arguments (the message names the field) to match the tool's inputSchema, then call again."
        }
        UnknownFunction | NotFound => "call tools/list for the tools you may use.",
        PolicyDenied => {
            "the policy does not allow this call; do not retry it. Ask the user or operator if it is needed."
        }
        ApprovalRequired => "wait for a human's decision on the approval request.",
        ApprovalDenied => "a human denied this call; do not retry it.",
        ApprovalExpired => {
            "nobody decided the approval in time; call again only if the user still wants it."
        }
        ApprovalWithdrawn => {
            "the request was withdrawn (tasks/cancel) before anyone decided it; it did not run. Call again only if the user still wants it."
        }
        BudgetExceeded => {
            "the budget named above is spent; do not retry within this task or window. Tell the user."
        }
        CapabilityDenied => {
            "the tool needed something the policy does not grant (a host, a secret); do not retry unchanged."
        }
        FuelExhausted | Timeout | MemoryLimit | StackOverflow | OutputTooLarge => {
            "the tool hit a limit with this input; calling again with the same input fails the same way. Try a smaller request."
        }
        Trap => "the tool crashed on this input; do not retry it unchanged.",
        ToolDisabled => "the tool is disabled; call tools/list for the tools you may use.",
        IdempotencyKeyReused => {
            "this idempotency key was used for another request; use a new key for a new request."
        }
        IdempotencyInProgress => {
            "the first call with this idempotency key is still running; retry the same call later for its answer."
        }
        HostLost => {
            "the host running the call stopped before it finished; it may have had effects. Check before calling again."
        }
        Overloaded | TenantOverloaded | Unavailable => "retry in a few seconds.",
        Unauthenticated | Forbidden => "the API key may not do this; ask the operator.",
        InvalidRequest | PayloadTooLarge => "fix the request, then call again.",
        InvalidComponent | InvalidPolicy | Conflict | Corrupt | Internal => {
            "a fault of the host, not of the request; tell the operator."
        }
    }
}

pub fn function<'t>(tool: &'t Tool, name: &str) -> Option<&'t FunctionInfo> {
    tool.catalog().functions.iter().find(|f| f.name == name)
}

/// Whether `value` is the `err` side of a function whose WIT result is a
/// `result<_, _>`.
fn is_wit_err(function: Option<&FunctionInfo>, value: &Value) -> bool {
    function.is_some_and(|f| matches!(f.result, Some(Ty::Result { .. })))
        && value.as_object().is_some_and(|o| o.contains_key("err"))
}

/// Whether `ty` is `toolhost:tool/content`'s `content-block` (a variant of
/// that name whose cases are among text, image, audio, embedded-resource
/// and resource-link).
fn is_content_block(ty: &Ty) -> bool {
    const CASES: &[&str] = &[
        "text",
        "image",
        "audio",
        "embedded-resource",
        "resource-link",
    ];
    matches!(ty, Ty::Variant(v) if v.name.as_deref() == Some("content-block")
        && v.items.iter().all(|c| CASES.contains(&c.name.as_str())))
}

/// Whether a function returns MCP content: `list<content-block>`, or a
/// `result` whose `ok` side is one.
pub fn returns_content(f: &FunctionInfo) -> bool {
    let list = |t: &Ty| matches!(t, Ty::List(inner) if is_content_block(inner));
    match &f.result {
        Some(t @ Ty::List(_)) => list(t),
        Some(Ty::Result { ok: Some(ok), .. }) => list(ok),
        _ => false,
    }
}

/// A `list<content-block>` (or the `ok` side of a result holding one) as
/// MCP content blocks; `None` for anything else (an `err`: answered as the
/// tool's error).
fn content_blocks(value: &Value) -> Option<Vec<Content>> {
    let list = match value {
        Value::Array(a) => a,
        Value::Object(o) if o.len() == 1 => o.get("ok")?.as_array()?,
        _ => return None,
    };
    list.iter().map(content_block).collect()
}

/// One `content-block` value (as Toolhost writes variants in JSON) as the
/// MCP content block it stands for.
fn content_block(v: &Value) -> Option<Content> {
    let (case, payload) = v.as_object()?.iter().next()?;
    let field = |name: &str| payload.get(name).filter(|v| !v.is_null()).cloned();
    let wire = match case.as_str() {
        "text" => json!({"type": "text", "text": payload}),
        "image" | "audio" => json!({
            "type": case,
            "data": field("data")?,
            "mimeType": field("mime-type")?,
        }),
        "embedded-resource" => {
            let mut resource = json!({"uri": field("uri")?});
            if let Some(m) = field("mime-type") {
                resource["mimeType"] = m;
            }
            match (field("text"), field("blob")) {
                (Some(text), _) => resource["text"] = text,
                (None, Some(blob)) => resource["blob"] = blob,
                (None, None) => resource["text"] = json!(""),
            }
            json!({"type": "resource", "resource": resource})
        }
        "resource-link" => {
            let mut link =
                json!({"type": "resource_link", "uri": field("uri")?, "name": field("name")?});
            if let Some(d) = field("description") {
                link["description"] = d;
            }
            if let Some(m) = field("mime-type") {
                link["mimeType"] = m;
            }
            link
        }
        _ => return None,
    };
    serde_json::from_value(wire).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_blocks_map_to_the_mcp_wire_form() {
        let value = json!([
            {"text": "hi"},
            {"image": {"data": "AAEC", "mime-type": "image/png"}},
            {"embedded-resource": {"uri": "test://r", "mime-type": null, "text": null, "blob": "AAEC"}},
            {"resource-link": {"uri": "test://l", "name": "l", "description": null, "mime-type": "text/plain"}},
        ]);
        let blocks = content_blocks(&value).unwrap();
        let wire = serde_json::to_value(&blocks).unwrap();
        assert_eq!(wire[0], json!({"type": "text", "text": "hi"}));
        assert_eq!(wire[1]["type"], "image");
        assert_eq!(wire[1]["mimeType"], "image/png");
        assert_eq!(wire[2]["resource"]["blob"], "AAEC");
        assert!(wire[2]["resource"].get("mimeType").is_none());
        assert_eq!(wire[3]["type"], "resource_link");
        assert_eq!(wire[3]["mimeType"], "text/plain");
        // The ok side of a result; an err is not content.
        assert!(content_blocks(&json!({"ok": [{"text": "x"}]})).is_some());
        assert!(content_blocks(&json!({"err": "no"})).is_none());
        // Anything else falls back to JSON text.
        assert!(content_blocks(&json!([{"video": {}}])).is_none());
        assert!(content_blocks(&json!("text")).is_none());
    }

    #[test]
    fn error_texts_start_with_the_kind_and_say_what_to_do() {
        let t = error_text(&Error::new(
            ErrorKind::BudgetExceeded,
            "max_tool_calls: 3 used",
        ));
        assert!(t.starts_with("budget_exceeded: max_tool_calls"), "{t}");
        assert!(t.contains("\nWhat to do: "), "{t}");
    }
}
