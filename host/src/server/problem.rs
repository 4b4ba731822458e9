//! Transport-level errors as RFC 9457 `application/problem+json`.
//!
//! Invocation outcomes (ran, failed, refused by the gate) are answered in the
//! invocation shape ([`crate::invoke::InvocationResponse`]); everything else
//! that goes wrong with a request (no key, a malformed body, no such tool) is
//! a problem document with the stable error `kind` as an extension member.

use crate::error::{Error, ErrorKind};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:toolhost:problem:<kind>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem.
    pub title: String,
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The stable machine-readable error kind.
    pub kind: String,
}

/// An error answered as a problem document.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: Error,
    /// Seconds, for 503 and 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        Error::new(kind, message).into()
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let status = StatusCode::from_u16(match error.kind {
            // Outside an invocation these are the caller's mistakes.
            k if k.is_sandbox_failure() => 422,
            k => status_of(k),
        })
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError {
            status,
            error,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(kind = %self.error.kind, "{}", self.error.message);
        }
        let problem = Problem {
            type_: format!("urn:toolhost:problem:{}", self.error.kind),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.error.message,
            kind: self.error.kind.to_string(),
        };
        let mut response = (self.status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"toolhost\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The answer for routes that do not exist.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route for {}", uri.path()))
}

/// The answer for a method a route does not take.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!("{} does not take {method}", uri.path()),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Parse a JSON request body; errors name the field. (Any content type is
/// taken: curl's default form type included.)
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("the request body is not a valid {what}{at}: {}", e.inner()),
        )
    })?;
    // One document: bytes after it (a second object, garbage) are not
    // silently dropped, as a parser in front of the host might read them.
    de.end().map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("the request body is not a valid {what}: {e} (after the JSON document)"),
        )
    })?;
    Ok(value)
}

/// Deserialize a whole JSON number (`567` or `567.0`, as JSON Schema's
/// `integer` allows) into an `i64`; numbers past `i64` saturate, so the
/// caller's range check names them.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = <serde_json::Number as serde::Deserialize>::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.as_u64().is_some() {
        return Ok(i64::MAX);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.is_finite() => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number, found {n}"
        ))),
    }
}

/// Turn an extractor's rejection (bad JSON, query, path, body) into a
/// problem that says what was wrong.
pub fn rejection(r: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = r.to_string();
    let status = r.into_response().status();
    let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorKind::PayloadTooLarge
    } else {
        ErrorKind::InvalidRequest
    };
    ApiError::new(kind, message).with_status(if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    })
}

/// The kind an error status stands for, when something other than our own
/// code (axum's extractors and router) answered it.
fn kind_for(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        413 => ErrorKind::PayloadTooLarge,
        429 => ErrorKind::TenantOverloaded,
        503 => ErrorKind::Overloaded,
        504 => ErrorKind::Timeout,
        s if s >= 500 => ErrorKind::Internal,
        _ => ErrorKind::InvalidRequest,
    }
}

/// Every error is a problem document: an error answered in another shape
/// (axum's plain-text rejections of a path, query or JSON body it could not
/// parse, or anything else that slips past a handler) is rewritten as one,
/// keeping its status, its text as `detail`, and its other headers (such as
/// `Allow`). Invocation answers (`application/json`) and problems pass
/// unchanged.
pub async fn ensure_problem(response: Response) -> Response {
    use http_body_util::BodyExt;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/problem+json")
        || content_type.starts_with("application/json")
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut problem = ApiError::new(kind_for(status), detail).with_status(status);
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        problem.retry_after = Some(1);
    }
    let mut out = problem.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut()
                .entry(name)
                .or_insert_with(|| value.clone());
        }
    }
    out
}

/// The HTTP status this kind answers with. Sandbox failures are 200: the
/// tool ran and failed, and that is data for the agent.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        k if k.is_sandbox_failure() => 200,
        ErrorKind::InvalidArgs
        | ErrorKind::InvalidComponent
        | ErrorKind::InvalidPolicy
        | ErrorKind::IdempotencyKeyReused => 422,
        ErrorKind::UnknownFunction | ErrorKind::NotFound => 404,
        ErrorKind::PolicyDenied
        | ErrorKind::Forbidden
        | ErrorKind::ApprovalDenied
        | ErrorKind::ApprovalExpired
        | ErrorKind::ApprovalWithdrawn => 403,
        ErrorKind::ApprovalRequired => 202,
        ErrorKind::BudgetExceeded | ErrorKind::TenantOverloaded => 429,
        ErrorKind::ToolDisabled | ErrorKind::Conflict | ErrorKind::IdempotencyInProgress => 409,
        ErrorKind::Unauthenticated => 401,
        ErrorKind::InvalidRequest => 400,
        ErrorKind::PayloadTooLarge => 413,
        ErrorKind::Overloaded | ErrorKind::Unavailable => 503,
        // An invocation outcome: it ran (as far as anyone knows) and its
        // end was lost; the answer is data for the agent, as for any
        // sandbox failure.
        ErrorKind::HostLost => 200,
        _ => 500,
    }
}
