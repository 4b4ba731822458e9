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
use crate::invoke::{Call, InvocationResponse, Outcome, Status};
use crate::keys::Role;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

/// The invoke request body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// The arguments, keyed by parameter name (see the function's schema).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub args: Option<serde_json::Value>,
    /// The orchestrator's task: per-task budgets apply to it.
    #[serde(default)]
    pub task_id: Option<String>,
    /// The workflow whose policy governs the call (default: the policy's
    /// only workflow, if it has one).
    #[serde(default)]
    pub workflow: Option<String>,
}

/// Parse an invoke body: empty means `{}`; errors name the field.
pub fn parse_request(body: &[u8]) -> Result<InvokeRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(InvokeRequest::default());
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let request: InvokeRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "the request body is not a valid invoke request{at}: {}",
                e.inner()
            ),
        )
    })?;
    for (field, value) in [
        ("task_id", &request.task_id),
        ("workflow", &request.workflow),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
        {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("`{field}` must be 1 to 200 characters without control characters"),
            ));
        }
    }
    Ok(request)
}

/// The HTTP status of an invocation outcome.
pub fn http_status(response: &InvocationResponse) -> StatusCode {
    let code = match response.status {
        Status::Ok | Status::Error => 200,
        Status::PendingApproval => 202,
        Status::Refused => match response.error.as_ref().map(|e| e.kind) {
            Some(ErrorKind::CapabilityDenied) => 403,
            Some(k) => k.http_status(),
            None => 500,
        },
    };
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Invoke a tool's only function, or `tool__function` (the name LLMs see).
#[utoipa::path(post, path = "/v1/tools/{tool}/invoke", tag = "invoke",
    params(("tool" = String, Path, description = "`name` (a tool with one function) or `name__function`")),
    request_body = InvokeRequest,
    responses(
        (status = 200, description = "The function ran: `status` is `ok` (with `result`) or `error` (fuel, timeout, memory, trap, output cap)", body = InvocationResponse),
        (status = 202, description = "Waiting for a human's approval", body = InvocationResponse),
        (status = 403, description = "Refused by policy", body = InvocationResponse),
        (status = 404, description = "No such tool or function", body = InvocationResponse),
        (status = 409, description = "The tool is disabled", body = super::problem::Problem),
        (status = 422, description = "Invalid arguments", body = InvocationResponse),
        (status = 429, description = "Over budget (names the limit)", body = InvocationResponse),
        (status = 503, description = "Overloaded; retry after `Retry-After` seconds", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn invoke_tool(
    State(app): State<Arc<App>>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(tool) = path.map_err(rejection)?;
    let (name, function) = match tool.split_once("__") {
        Some((n, f)) => (n.to_string(), Some(f.to_string())),
        None => (tool, None),
    };
    run(app, caller, name, function, body).await
}

/// Invoke `function` of `tool`.
#[utoipa::path(post, path = "/v1/tools/{tool}/{function}/invoke", tag = "invoke",
    params(
        ("tool" = String, Path, description = "The tool's name"),
        ("function" = String, Path, description = "The function (`lookup-order`, `lookup_order`; `crm/divide` as `crm/divide/invoke` or `crm__divide`)"),
    ),
    request_body = InvokeRequest,
    responses(
        (status = 200, description = "The function ran (see /v1/tools/{tool}/invoke)", body = InvocationResponse),
    ),
    security(("bearer" = [])))]
pub async fn invoke_function(
    State(app): State<Arc<App>>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((tool, function)) = path.map_err(rejection)?;
    run(app, caller, tool, Some(function), body).await
}

/// `POST /v1/tools/{tool}/{interface}/{function}/invoke`.
pub async fn invoke_qualified(
    State(app): State<Arc<App>>,
    caller: Caller,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((tool, iface, function)) = path.map_err(rejection)?;
    run(app, caller, tool, Some(format!("{iface}/{function}")), body).await
}

async fn run(
    app: Arc<App>,
    caller: Caller,
    name: String,
    function: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Invoke)?;
    let body = body.map_err(rejection)?;
    let request = parse_request(&body)?;
    let tool = app.tools.get(caller.tenant(), &name).await?;
    let function = match function {
        Some(f) => f,
        None => {
            let functions = &tool.catalog().functions;
            if functions.len() == 1 {
                functions[0].name.clone()
            } else {
                let names: Vec<String> = functions
                    .iter()
                    .map(|f| crate::schema::llm_name(&name, f))
                    .collect();
                return Err(ApiError::new(
                    ErrorKind::UnknownFunction,
                    format!(
                        "tool `{name}` has {} functions; invoke one: {}",
                        functions.len(),
                        names.join(", ")
                    ),
                ));
            }
        }
    };
    let call = Call {
        function,
        args: request
            .args
            .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
        limits: app.limits.clone(),
        context: CallContext {
            tenant: Some(caller.tenant().to_string()),
            workflow: request.workflow,
            task_id: request.task_id,
            principal: Some(caller.key.id.clone()),
        },
    };
    let outcome = app.run_invocation(tool, call).await?;
    Ok(respond(&outcome))
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
    (http_status(&response), Json(response)).into_response()
}
