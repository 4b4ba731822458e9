//! `POST /v1/tools/{tool}/invoke`: one invocation through the gate.
//!
//! Status mapping (documented in the README): the function ran → 200 with
//! `status: ok` (a WIT `result`'s `err` included: data for the agent) or
//! `status: error` (fuel, timeout, memory, trap, output cap: the tool ran and
//! failed); refused before running → invalid arguments 422, unknown
//! function 404, policy 403, budget 429; awaiting approval 202.

use super::App;
use super::auth::Caller;
use super::problem::{ApiError, rejection};
use crate::error::{Error, ErrorKind};
use crate::gate::CallContext;
use crate::idempotency;
use crate::invoke::{InvocationResponse, Outcome};
use crate::keys::Role;
use crate::service::{Answer, Request};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

/// The invoke request body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// The arguments, keyed by parameter name (see the function's schema).
    /// An object naming one key twice is refused.
    #[serde(default, deserialize_with = "crate::value::strict_json_opt")]
    #[schema(value_type = Object)]
    pub args: Option<serde_json::Value>,
    /// The orchestrator's task: per-task budgets apply to it.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub task_id: Option<String>,
    /// The workflow whose policy governs the call (default: the policy's
    /// only workflow, if it has one).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub workflow: Option<String>,
    /// If the call waits for approval: where to POST
    /// `{"approval", "invocation"}` once it is decided (must match the
    /// server's `--callback-allow`).
    #[serde(default)]
    #[schema(pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,4})?(/[A-Za-z0-9._~%/-]*)?$")]
    pub callback_url: Option<String>,
}

/// Parse an invoke body: empty means `{}`; errors name the field.
pub fn parse_request(body: &[u8]) -> Result<InvokeRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(InvokeRequest::default());
    }
    let request: InvokeRequest = super::problem::parse_json(body, "invoke request")?;
    for (field, value) in [
        ("task_id", &request.task_id),
        ("workflow", &request.workflow),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.chars().count() > 200 || v.chars().any(char::is_control))
        {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("`{field}` must be 1 to 200 characters without control characters"),
            ));
        }
    }
    Ok(request)
}

/// The answers of both invoke operations, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Answers {
    /// The function ran: `status` is `ok` (with `result`) or `error` (fuel,
    /// timeout, memory, trap, output cap).
    #[response(status = 200)]
    Ran(InvocationResponse),
    /// Waiting for a human's approval.
    #[response(status = 202)]
    Pending(InvocationResponse),
    /// Malformed request: its JSON, a field, a header, a malformed
    /// `callback_url`.
    #[response(status = 400)]
    Malformed(super::problem::Problem),
    /// Refused by policy (`policy_denied`, `approval_denied`,
    /// `approval_expired`), the key lacks the `invoke` role, or
    /// `callback_url` is outside the server's `--callback-allow`
    /// (`forbidden`).
    #[response(status = 403)]
    Refused(InvocationResponse),
    /// No such tool or function.
    #[response(status = 404)]
    NotFound(InvocationResponse),
    /// The tool is disabled, or (Idempotency-Key) the first request with
    /// this key is still running.
    #[response(status = 409)]
    Conflict(super::problem::Problem),
    /// Invalid arguments, or an Idempotency-Key reused with another
    /// request.
    #[response(status = 422)]
    Invalid(InvocationResponse),
    /// Over budget (names the limit).
    #[response(status = 429)]
    OverBudget(InvocationResponse),
    /// Overloaded; retry after `Retry-After` seconds.
    #[response(status = 503)]
    Overloaded(super::problem::Problem),
}

/// Invoke a tool's only function, or `tool__function` (the name LLMs see).
#[utoipa::path(post, path = "/v1/tools/{tool}/invoke", operation_id = "invoke_tool", tag = "invoke",
    params(
        ("tool" = String, Path, description = "`name` (a tool with one function) or `name__function`"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Retry safely: the same key with the same request returns the first answer (no second run or charge); with another request 422; while the first runs 409. Kept 24 h by default. 1 to 255 visible ASCII characters."),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context: the invocation's spans continue this trace (and the record keeps its trace id). One valid header; an invalid or repeated one is ignored (a new trace)."),
    ),
    request_body = InvokeRequest,
    responses(Answers),
    security(("bearer" = [])))]
pub async fn invoke_tool(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(tool) = path.map_err(rejection)?;
    let (name, function) = match tool.split_once("__") {
        Some((n, f)) => (n.to_string(), Some(f.to_string())),
        None => (tool, None),
    };
    run(app, caller, headers, name, function, body).await
}

/// Invoke `function` of `tool`.
#[utoipa::path(post, path = "/v1/tools/{tool}/{function}/invoke", operation_id = "invoke_function", tag = "invoke",
    params(
        ("tool" = String, Path, description = "The tool's name"),
        ("function" = String, Path, description = "The function (`lookup-order`, `lookup_order`; `crm/divide` as `crm/divide/invoke` or `crm__divide`)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "As for /v1/tools/{tool}/invoke"),
        ("traceparent" = Option<String>, Header, description = "As for /v1/tools/{tool}/invoke"),
    ),
    request_body = InvokeRequest,
    responses(Answers),
    security(("bearer" = [])))]
pub async fn invoke_function(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((tool, function)) = path.map_err(rejection)?;
    run(app, caller, headers, tool, Some(function), body).await
}

/// `POST /v1/tools/{tool}/{interface}/{function}/invoke`.
pub async fn invoke_qualified(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((tool, iface, function)) = path.map_err(rejection)?;
    run(
        app,
        caller,
        headers,
        tool,
        Some(format!("{iface}/{function}")),
        body,
    )
    .await
}

async fn run(
    app: Arc<App>,
    caller: Caller,
    headers: HeaderMap,
    name: String,
    function: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Invoke)?;
    let idempotency_key = idempotency_key(&headers)?;
    let body = body.map_err(rejection)?;
    let request = parse_request(&body)?;
    if let Some(url) = &request.callback_url {
        app.callbacks.check(url)?;
    }
    let tool = app.tools.get(caller.tenant(), &name).await?;
    let request = Request {
        tool,
        function,
        args: request
            .args
            .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
        limits: app.limits.clone(),
        context: CallContext {
            tenant: caller.tenant().clone(),
            workflow: request.workflow,
            task_id: request.task_id,
            principal: Some(caller.key.id.to_string()),
            idempotency_key,
            approval: None,
            callback_url: request.callback_url,
            transport: Some("http".into()),
            traceparent: traceparent(&headers),
        },
        hold: super::limit::current_slot().map(|s| s as Arc<dyn std::any::Any + Send + Sync>),
    };
    match app.service.invoke(request).await? {
        Answer::Done(outcome) => {
            super::record_in_span(&outcome);
            Ok(respond(&outcome))
        }
        Answer::Replayed(response) => {
            let mut answer = answer(status_of(&response), &response);
            answer
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(answer)
        }
    }
}

/// The `Idempotency-Key` header, if sent: exactly one, valid. An empty
/// value or a repeated header is refused (400), never ignored or half-read.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "send one Idempotency-Key header, not several",
        ));
    }
    let key = value
        .to_str()
        .map_err(|_| ApiError::new(ErrorKind::InvalidRequest, "the Idempotency-Key is not text"))?;
    idempotency::validate_key(key)?;
    Ok(Some(key.to_string()))
}

/// The caller's W3C `traceparent`, if it sent exactly one valid header;
/// anything else is ignored (W3C Trace Context: the invocation starts a new
/// trace), never refused.
pub fn traceparent(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?.trim();
    crate::observe::trace::valid_traceparent(value).then(|| value.to_string())
}

/// Answer an outcome: the invocation shape with its status code, or a 500
/// problem when the host itself failed (nothing was recorded).
pub fn respond(outcome: &Outcome) -> Response {
    if let Some(e) = &outcome.error
        && e.kind == ErrorKind::Internal
    {
        return ApiError::from(Error::new(ErrorKind::Internal, e.message.clone())).into_response();
    }
    let response = outcome.response();
    answer(status_of(&response), &response)
}

/// An invocation answer with its status code.
pub fn answer(status: u16, response: &InvocationResponse) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(response)).into_response()
}

/// The HTTP status an invocation's answer is sent with: ran → 200 (`ok` or
/// `error`, `host_lost` included); waiting for approval → 202; refused → by
/// kind (invalid arguments 422, unknown function 404, policy or a missing
/// granted secret 403, budget 429). The HTTP adapter's mapping: the core
/// knows no status codes.
pub fn status_of(response: &InvocationResponse) -> u16 {
    use crate::invoke::Status;
    match response.status {
        Status::Ok | Status::Error => 200,
        Status::PendingApproval | Status::Running => 202,
        Status::Refused => match response.error.as_ref().map(|e| e.kind) {
            Some(ErrorKind::CapabilityDenied) => 403,
            Some(k) => super::problem::status_of(k),
            None => 500,
        },
    }
}
