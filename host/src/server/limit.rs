//! Bounded concurrency with a bounded queue, and a deadline per request.
//!
//! At most `max_concurrency` API requests run at once; up to `max_queue`
//! more wait (each at most the request timeout) for a slot. Beyond that a
//! request is refused at once with 503 and `Retry-After`: the server never
//! piles up unbounded work. A request that runs past the timeout is answered
//! 504; an invocation it started still finishes and is recorded (invocations
//! run on their own tasks).
//!
//! A request's body (at most `max_body`) is read before it takes a slot, so
//! clients that send their bodies slowly hold only their own connections,
//! never the slots that run invocations. Uploads (`POST /v1/tools`, up to
//! `--max-upload`) are read inside the slot instead: the slots bound how
//! much upload data is buffered at once.

use super::App;
use super::problem::ApiError;
use crate::error::ErrorKind;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The server's admission control.
pub struct Limiter {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queue: usize,
    timeout: Duration,
    max_body: usize,
}

impl Limiter {
    pub fn new(
        max_concurrency: usize,
        max_queue: usize,
        timeout: Duration,
        max_body: usize,
    ) -> Limiter {
        Limiter {
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            max_queue,
            timeout,
            max_body,
        }
    }
}

impl Limiter {
    /// The per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn overloaded() -> Response {
    let mut e = ApiError::new(
        ErrorKind::Overloaded,
        "the server is at its concurrency and queue limits; retry later",
    );
    e.retry_after = Some(1);
    e.into_response()
}

/// The middleware.
pub async fn limit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let limiter = &app.limiter;
    let started = tokio::time::Instant::now();
    let request = if is_upload(&request) {
        request
    } else {
        match tokio::time::timeout(limiter.timeout, read_body(request, limiter.max_body)).await {
            Ok(Ok(request)) => request,
            Ok(Err(refused)) => return refused,
            Err(_) => return past_deadline(limiter.timeout),
        }
    };
    let _permit = match limiter.permits.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if limiter.waiting.fetch_add(1, Ordering::SeqCst) >= limiter.max_queue {
                limiter.waiting.fetch_sub(1, Ordering::SeqCst);
                return overloaded();
            }
            let acquired =
                tokio::time::timeout(limiter.timeout, limiter.permits.clone().acquire_owned())
                    .await;
            limiter.waiting.fetch_sub(1, Ordering::SeqCst);
            match acquired {
                Ok(Ok(p)) => p,
                _ => return overloaded(),
            }
        }
    };
    let left = limiter.timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, next.run(request)).await {
        Ok(response) => response,
        Err(_) => past_deadline(limiter.timeout),
    }
}

fn past_deadline(timeout: Duration) -> Response {
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

/// A component upload: its body is read by the handler, inside a slot.
fn is_upload(request: &Request) -> bool {
    request.method() == axum::http::Method::POST && request.uri().path() == "/v1/tools"
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
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the request body is larger than the server's {max}-byte limit"),
        )
        .into_response()),
        Err(e) => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("reading the request body: {e}"),
        )
        .into_response()),
    }
}
