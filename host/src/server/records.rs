//! Past invocations (`/v1/invocations`) and task budgets (`/v1/tasks`).

use super::App;
use super::auth::Caller;
use super::problem::{ApiError, rejection};
use crate::error::ErrorKind;
use crate::gate::CallContext;
use crate::keys::Role;
use crate::storage::{InvocationFilter, InvocationRecord};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

const READERS: &[Role] = &[Role::Invoke, Role::Audit, Role::Approve];

/// A time query parameter (`since`, `until`): see [`crate::stats::parse_time`].
pub fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            crate::stats::parse_time(v, crate::clock::now_ms())
                .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("`{name}`: {e}")))
        })
        .transpose()
}

/// A record as the API shows it: the response the caller was given, with
/// its context (and, for records written since they carry them, the
/// redacted arguments and their hash, the policy decision, the budget
/// charge and the outbound calls).
pub fn show(r: &InvocationRecord) -> Value {
    let mut v: Value = serde_json::from_str(&r.response).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        // The row's status is the truth (a running row keeps the answer it
        // had while it waited for approval, or none yet).
        obj.insert("invocation_id".into(), json!(r.id));
        obj.insert("status".into(), json!(r.status));
        obj.entry("tool").or_insert_with(|| json!(r.tool));
        obj.entry("function").or_insert_with(|| json!(r.function));
        if r.status == crate::storage::Status::Running {
            obj.insert("version".into(), json!(r.version));
            obj.remove("error");
            obj.remove("approval_id");
            obj.entry("usage")
                .or_insert_with(|| json!(crate::record::Usage::default()));
        }
        obj.insert("workflow".into(), json!(r.workflow));
        obj.insert("task_id".into(), json!(r.task_id));
        obj.insert("principal".into(), json!(r.principal));
        obj.insert("created_ms".into(), json!(r.created_ms));
    }
    v
}

/// One past invocation.
#[utoipa::path(get, path = "/v1/invocations/{id}", operation_id = "get_invocation", tag = "invocations",
    params(("id" = String, Path, description = "The invocation id (`inv_…`)")),
    responses(
        (status = 200, description = "The invocation's response, with workflow, task_id, principal and created_ms", body = Object),
        (status = 404, description = "No such invocation in the caller's tenant", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn get_one(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_any(READERS)?;
    let record = app
        .storage
        .invocation_get(caller.tenant(), &id.as_str().into())
        .await?
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no invocation `{id}`")))?;
    let record = crate::approvals::current_record(app.storage.as_ref(), record).await?;
    let mut shown = show(&record);
    // Its callbacks, if any, and how their delivery went.
    let callbacks = app.storage.outbox_for(caller.tenant(), &id).await?;
    if !callbacks.is_empty() {
        shown["callbacks"] = json!(
            callbacks
                .iter()
                .map(|m| json!({
                    "url": m.url,
                    "state": m.state,
                    "attempts": m.attempts,
                    "last_error": m.last_error,
                    "delivered_ms": m.delivered_ms,
                }))
                .collect::<Vec<_>>()
        );
    }
    Ok(Json(shown))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tool: Option<String>,
    status: Option<crate::invoke::Status>,
    workflow: Option<String>,
    task_id: Option<String>,
    /// The error kind (`fuel_exhausted`, `policy_denied`, ...).
    kind: Option<String>,
    /// Created at or after this time: Unix ms, `2026-11-26`,
    /// `2026-11-26T10:00:00Z`, or a period ago (`24h`, `7d`).
    since: Option<String>,
    /// Created before this time (same forms).
    until: Option<String>,
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// Past invocations, newest first.
#[utoipa::path(get, path = "/v1/invocations", operation_id = "list_invocations", tag = "invocations",
    params(ListQuery),
    responses(
        (status = 200, description = "`{\"invocations\": [...], \"next_cursor\": \"…\" | null}`", body = Object),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_any(READERS)?;
    let Query(q) = query.map_err(rejection)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "`limit` must be 1 to 500",
        ));
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("`cursor` {c:?} is not a cursor this server gave"),
            )
        })?),
    };
    let mut filter = InvocationFilter {
        tool: q.tool,
        status: q.status,
        workflow: q.workflow,
        task_id: q.task_id,
        error_kind: q.kind,
        since_ms: time_param("since", q.since.as_deref())?,
        until_ms: time_param("until", q.until.as_deref())?,
        before,
        limit,
    };
    // Read in growing chunks and stop past MAX_LIST_BYTES of records: a page
    // of 500 records of a megabyte each would otherwise be read, held and
    // sent whole (one tenant's read costing the server gigabytes). A page
    // cut short still has a `next_cursor`.
    let mut invocations = Vec::new();
    let mut bytes = 0usize;
    let mut next = None;
    let mut chunk = limit.min(8);
    'pages: loop {
        filter.limit = chunk;
        let rows = app
            .storage
            .invocation_list(caller.tenant(), filter.clone())
            .await?;
        let more = rows.len() as i64 == chunk;
        for (pos, r) in rows {
            bytes = bytes.saturating_add(r.response.len());
            let r = crate::approvals::current_record(app.storage.as_ref(), r).await?;
            invocations.push(show(&r));
            filter.before = Some(pos);
            if invocations.len() as i64 == limit || bytes >= MAX_LIST_BYTES {
                next = Some(pos.to_string());
                break 'pages;
            }
        }
        if !more {
            break;
        }
        // Grow while records are small; never ask for more than the bytes
        // left would hold at the average size seen so far.
        let seen = invocations.len().max(1);
        let fit = (MAX_LIST_BYTES - bytes) / (bytes / seen).max(1) + 1;
        chunk = (chunk * 2)
            .min(limit - invocations.len() as i64)
            .min(i64::try_from(fit).unwrap_or(i64::MAX))
            .max(1);
    }
    Ok(Json(
        json!({"invocations": invocations, "next_cursor": next}),
    ))
}

/// Past this many bytes of stored records, a list page ends early (its
/// `next_cursor` goes on from there).
const MAX_LIST_BYTES: usize = 8 << 20;

/// Tokens an orchestrator's model used for a task.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    #[serde(default, deserialize_with = "super::problem::whole_number")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub input_tokens: i64,
    #[serde(default, deserialize_with = "super::problem::whole_number")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub output_tokens: i64,
    /// The task's workflow (default: the policy's only workflow).
    #[serde(default)]
    pub workflow: Option<String>,
}

/// Report model tokens against a task's budget.
#[utoipa::path(post, path = "/v1/tasks/{task_id}/usage", operation_id = "report_task_usage", tag = "budgets",
    params(("task_id" = String, Path, description = "The orchestrator's task id")),
    request_body = TokenUsage,
    responses(
        (status = 200, description = "Recorded. `within_budget` is false and `exceeded` names each token limit now passed (the tokens were spent, so they are recorded regardless)", body = Object),
        (status = 403, description = "No policy document governs the workflow", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn report_usage(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(task_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Invoke)?;
    let body: TokenUsage = super::problem::parse_json(&body.map_err(rejection)?, "usage report")?;
    let context = CallContext {
        tenant: caller.tenant().clone(),
        workflow: body.workflow,
        task_id: Some(task_id.clone()),
        principal: Some(caller.key.id.to_string()),
        ..CallContext::default()
    };
    for (field, n) in [
        ("input_tokens", body.input_tokens),
        ("output_tokens", body.output_tokens),
    ] {
        if !(0..=1_000_000_000_000).contains(&n) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("`{field}` must be 0 to 10^12"),
            ));
        }
    }
    let exceeded = app
        .governed
        .report_tokens(&context, body.input_tokens, body.output_tokens)
        .await?;
    let usage = app
        .governed
        .ledger()
        .usage(&crate::ids::LedgerScope::task(caller.tenant(), &task_id))
        .await?;
    Ok(Json(json!({
        "task_id": task_id,
        "within_budget": exceeded.is_empty(),
        "exceeded": exceeded,
        "usage": usage,
    })))
}

/// A task's budget ledger.
#[utoipa::path(get, path = "/v1/tasks/{task_id}/usage", operation_id = "get_task_usage", tag = "budgets",
    params(("task_id" = String, Path, description = "The orchestrator's task id")),
    responses((status = 200, description = "`{\"task_id\", \"usage\": [{metric, used, reserved, ...}]}`", body = Object)),
    security(("bearer" = [])))]
pub async fn get_usage(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_any(READERS)?;
    let usage = app
        .governed
        .ledger()
        .usage(&crate::ids::LedgerScope::task(caller.tenant(), &task_id))
        .await?;
    Ok(Json(json!({"task_id": task_id, "usage": usage})))
}
