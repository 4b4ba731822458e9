//! Admission control for API requests, in this order, all within the
//! request's deadline:
//!
//! 1. **Who and may they**, from the headers alone: the key is authenticated
//!    and the route's roles checked ([`super::route_access`]) before any of
//!    the body is read, so an unauthenticated or unauthorized client is
//!    answered 401/403 without the server holding its body. The [`auth::Caller`]
//!    goes into the request's extensions; handlers take it from there.
//! 2. **The body**, read into memory (at most `max_body`) after reserving its
//!    bytes in the [`BodyMemory`] pool: 413 if declared too large, 429 past
//!    the tenant's share, 503 if the pool stays full until the deadline.
//!    It is read before a slot is taken, so clients that send slowly hold
//!    only their own connections and bytes, never the slots that run
//!    invocations. Uploads (`POST /v1/tools`, up to `--max-upload`, admin
//!    only) are read inside the slot instead, by their handler.
//! 3. **A slot**, shared fairly among tenants ([`FairSlots`]): 429
//!    `tenant_overloaded` when the tenant's own queue is full, 503
//!    `overloaded` when the server's is or the wait reaches the deadline;
//!    both with `Retry-After`.
//! 4. **The handler**, until the deadline: then 504. An invocation it
//!    started still finishes and is recorded (invocations run on their own
//!    tasks), and holds the request's slot until it does
//!    ([`current_slot`]): slots bound running invocations, not only
//!    requests, whatever the client does.
//!
//! A method the access table does not list for a route is answered 405
//! here (deny by default); a request no route matched passes to the
//! fallback (404), which reads nothing.

use super::App;
use super::auth;
use super::bodies::{self, BodyMemory};
use super::fair::{self, FairLimits, FairSlots};
use super::problem::ApiError;
use crate::error::ErrorKind;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The server's admission control.
pub struct Limiter {
    slots: FairSlots,
    bodies: BodyMemory,
    timeout: Duration,
}

/// The limits the [`Limiter`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    pub slots: FairLimits,
    pub timeout: Duration,
    pub max_body: usize,
    pub max_body_memory: usize,
}

impl Limiter {
    pub fn new(config: LimiterConfig) -> Limiter {
        Limiter {
            slots: FairSlots::new(config.slots),
            bodies: BodyMemory::new(config.max_body_memory, config.max_body),
            timeout: config.timeout,
        }
    }

    /// The per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A slot for `tenant`'s work that did not come through [`limit`] (a
    /// decision made in the console runs the approved call): waited for
    /// within the request deadline, refused as the API refuses a request.
    pub async fn slot(&self, tenant: &str) -> Result<Arc<fair::Slot>, ApiError> {
        let deadline = Instant::now() + self.timeout;
        match self.slots.acquire(tenant, deadline).await {
            Ok(slot) => Ok(Arc::new(slot)),
            Err(fair::Refusal::Tenant) => Err(tenant_overloaded_error(tenant, "request slots")),
            Err(fair::Refusal::Full | fair::Refusal::Deadline) => Err(overloaded_error()),
        }
    }

    /// Requests holding a slot, and waiting for one, now.
    pub fn slot_counts(&self) -> (usize, usize) {
        self.slots.counts()
    }
}

fn refused(kind: ErrorKind, message: String) -> ApiError {
    let mut e = ApiError::new(kind, message);
    e.retry_after = Some(1);
    e
}

fn overloaded_error() -> ApiError {
    crate::observe::metrics::rejected(503, "overloaded");
    refused(
        ErrorKind::Overloaded,
        "the server is at its concurrency and queue limits; retry later".into(),
    )
}

fn overloaded() -> Response {
    overloaded_error().into_response()
}

fn tenant_overloaded_error(tenant: &str, what: &str) -> ApiError {
    crate::observe::metrics::rejected(429, "tenant_overloaded");
    refused(
        ErrorKind::TenantOverloaded,
        format!("tenant `{tenant}` is at its share of the server's {what}; retry later"),
    )
}

fn tenant_overloaded(tenant: &str, what: &str) -> Response {
    tenant_overloaded_error(tenant, what).into_response()
}

/// The middleware.
pub async fn limit(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let limiter = &app.limiter;
    let deadline = Instant::now() + limiter.timeout;
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
    else {
        // No route: the fallback's 404, which reads nothing.
        return next.run(request).await;
    };
    // HEAD is answered by GET's handler.
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    // Deny by default: a method missing from the table is not taken, even
    // if a handler were registered for it.
    let Some(access) = super::route_access(&method, &route) else {
        return super::problem::method_not_allowed(request.method().clone(), request.uri().clone())
            .await
            .into_response();
    };
    let caller = match tokio::time::timeout_at(
        deadline,
        auth::authenticate(&app, request.headers()),
    )
    .await
    {
        Ok(Ok(caller)) => caller,
        Ok(Err(refused)) => return refused.into_response(),
        Err(_) => return past_deadline(limiter.timeout),
    };
    if let Err(refused) = caller.allowed(access) {
        return refused.into_response();
    }
    let tenant = caller.tenant().to_string();
    request.extensions_mut().insert(caller);
    let upload = method == Method::POST && route == "/v1/tools";
    // The reservation is held until the request is answered.
    let (request, _bytes) = if upload {
        (request, None)
    } else {
        let declared = http_body::Body::size_hint(request.body()).exact();
        let reserved = match limiter.bodies.reserve(&tenant, declared, deadline).await {
            Ok(r) => r,
            Err(bodies::Refusal::TooLarge) => return too_large(limiter.bodies.max_body()),
            Err(bodies::Refusal::Tenant) => return tenant_overloaded(&tenant, "body memory"),
            Err(bodies::Refusal::Deadline) => return overloaded(),
        };
        let read = read_body(request, limiter.bodies.max_body());
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(request)) => (request, Some(reserved)),
            Ok(Err(refused)) => return refused,
            Err(_) => return past_deadline(limiter.timeout),
        }
    };
    let slot = match limiter.slots.acquire(&tenant, deadline).await {
        Ok(slot) => Arc::new(slot),
        Err(fair::Refusal::Tenant) => return tenant_overloaded(&tenant, "request slots"),
        Err(fair::Refusal::Full | fair::Refusal::Deadline) => return overloaded(),
    };
    let handled = SLOT.scope(slot, tokio::time::timeout_at(deadline, next.run(request)));
    match handled.await {
        Ok(response) => response,
        Err(_) => past_deadline(limiter.timeout),
    }
}

tokio::task_local! {
    /// The slot of the request being handled.
    static SLOT: Arc<fair::Slot>;
}

/// The slot of the request being handled (None outside the middleware).
/// Work the request starts on its own task (an invocation) holds it too,
/// so the slot is freed when both the request and that work have ended: a
/// request that ends first (deadline, client gone) does not free the slot
/// its invocation still uses.
pub fn current_slot() -> Option<Arc<fair::Slot>> {
    SLOT.try_with(Arc::clone).ok()
}

fn past_deadline(timeout: Duration) -> Response {
    crate::observe::metrics::rejected(504, "deadline");
    ApiError::new(
        ErrorKind::Timeout,
        format!(
            "the request took longer than the server's {} ms limit",
            timeout.as_millis()
        ),
    )
    .with_status(StatusCode::GATEWAY_TIMEOUT)
    .into_response()
}

fn too_large(max: usize) -> Response {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("the request body is larger than the server's {max}-byte limit"),
    )
    .into_response()
}

/// The request with its body read into memory (at most `max` bytes), or
/// the answer that refuses it.
async fn read_body(request: Request, max: usize) -> Result<Request, Response> {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(Request::from_parts(
            parts,
            axum::body::Body::from(collected.to_bytes()),
        )),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(e) => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("reading the request body: {e}"),
        )
        .into_response()),
    }
}
