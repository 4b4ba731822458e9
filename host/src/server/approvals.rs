//! `/v1/approvals`: list, read, approve, deny.

use super::App;
use super::auth::Caller;
use super::problem::{ApiError, rejection};
use crate::approvals::{self, Decider, Verdict};
use crate::clock::now_ms;
use crate::error::ErrorKind;
use crate::keys::Role;
use crate::storage::ApprovalStatus;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

const READERS: &[Role] = &[Role::Approve, Role::Audit];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Default: all.
    status: Option<ApprovalStatus>,
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,19}\\.apr_[0-9a-f]+$")]
    cursor: Option<String>,
}

/// Approval requests, newest first.
#[utoipa::path(get, path = "/v1/approvals", operation_id = "list_approvals", tag = "approvals",
    params(ListQuery),
    responses((status = 200, description = "`{\"approvals\": [...], \"next_cursor\": \"…\" | null}`: each with tenant, workflow, task_id, tool, function, version, args (redacted), args_sha256, rule, requester, created_ms, expires_ms, status and the decision", body = Object)),
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
    let found = approvals::list(
        app.storage.as_ref(),
        caller.tenant(),
        q.status.map(ApprovalStatus::as_str),
        q.cursor.as_deref(),
        limit,
    )
    .await?;
    let now = now_ms();
    let next = (found.len() as i64 == limit)
        .then(|| found.last().map(approvals::cursor))
        .flatten();
    let list: Vec<Value> = found.iter().map(|a| approvals::view(a, now)).collect();
    Ok(Json(json!({ "approvals": list, "next_cursor": next })))
}

/// One approval request.
#[utoipa::path(get, path = "/v1/approvals/{id}", operation_id = "get_approval", tag = "approvals",
    params(("id" = String, Path, description = "The approval id (`apr_…`)")),
    responses(
        (status = 200, description = "The request and its status", body = Object),
        (status = 404, description = "No such request in the caller's tenant", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn get_one(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_any(READERS)?;
    let a = app
        .storage
        .approval_get(caller.tenant(), &id.as_str().into())
        .await?
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no approval request `{id}`")))?;
    Ok(Json(approvals::view(&a, now_ms())))
}

/// A decision's note.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why (kept in the request and the audit trail).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Approve: the call runs once, now; its result is the answer and the
/// invocation's record.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", operation_id = "approve", tag = "approvals",
    params(("id" = String, Path, description = "The approval id")),
    request_body = DecisionRequest,
    responses(
        (status = 200, description = "`{\"approval\": {...}, \"invocation\": {...}}`: the call ran", body = Object),
        (status = 403, description = "Not an approver, or the requester itself", body = super::problem::Problem),
        (status = 409, description = "Already decided, or expired (decisions are final)", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn approve(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    decide(app, caller, id, body, Verdict::Approve).await
}

/// Deny: final; the waiting invocation is refused with `approval_denied`.
#[utoipa::path(post, path = "/v1/approvals/{id}/deny", operation_id = "deny", tag = "approvals",
    params(("id" = String, Path, description = "The approval id")),
    request_body = DecisionRequest,
    responses(
        (status = 200, description = "`{\"approval\": {...}}`", body = Object),
        (status = 409, description = "Already decided, or expired", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn deny(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    decide(app, caller, id, body, Verdict::Deny).await
}

async fn decide(
    app: Arc<App>,
    caller: Caller,
    id: String,
    body: Result<Bytes, BytesRejection>,
    verdict: Verdict,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Approve)?;
    let body = body.map_err(rejection)?;
    let request: DecisionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionRequest::default()
    } else {
        super::problem::parse_json(&body, "decision")?
    };
    let decided = decide_as(&app, &caller, id, verdict, request.reason).await?;
    let mut out = json!({ "approval": approvals::view(&decided.approval, now_ms()) });
    if let Some(outcome) = &decided.outcome {
        out["invocation"] = json!(outcome.response());
    }
    // A callback, if the request gave one, is in the outbox: written with
    // the decision (deny) or the approved call's end, delivered at least
    // once by whichever host claims it.
    Ok(Json(out))
}

/// Decide request `id` of the caller's tenant as the caller: the one path
/// for the API and the console. Needs the `approve` role;
/// [`approvals::decide`] refuses the requester's own key, a decided or
/// expired request, and runs an approved call (on its own task: once
/// decided, it runs to completion whatever happens to the request).
pub async fn decide_as(
    app: &Arc<App>,
    caller: &Caller,
    id: String,
    verdict: Verdict,
    reason: Option<String>,
) -> Result<approvals::Decided, ApiError> {
    caller.require(Role::Approve)?;
    let decider = Decider {
        storage: app.storage.clone(),
        registry: app.registry.clone(),
        service: app.service.clone(),
        audit: app.governed.audit().clone(),
        limits: app.limits.clone(),
    };
    let tenant = caller.tenant().clone();
    let approver = caller.key.id.to_string();
    // On its own task: once decided, the approved call runs to completion
    // whatever happens to this request.
    // The request's slot (the API's `limit` layer took it); a decision
    // made elsewhere (the console) takes one as the API would, so an
    // approved call counts against `--max-concurrency` wherever it was
    // approved.
    let slot = match super::limit::current_slot() {
        Some(slot) => slot,
        None => app.limiter.slot(&tenant).await?,
    };
    let decided = app
        .tracker
        .spawn(async move {
            let _slot = slot;
            approvals::decide(
                &decider,
                &tenant,
                &id.as_str().into(),
                &approver,
                verdict,
                reason.as_deref(),
            )
            .await
        })
        .await
        .map_err(|e| crate::Error::internal(format!("the decision task failed: {e}")))??;
    if let Some(outcome) = &decided.outcome {
        tracing::info!(
            invocation_id = %outcome.invocation_id,
            approval_id = %decided.approval.id,
            status = outcome.status.as_str(),
            "approved invocation ran"
        );
    }
    Ok(decided)
}
