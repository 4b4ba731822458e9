//! Bounded concurrency with a bounded queue, and a deadline per request.
//!
//! At most `max_concurrency` API requests run at once; up to `max_queue`
//! more wait (each at most the request timeout) for a slot. Beyond that a
//! request is refused at once with 503 and `Retry-After`: the server never
//! piles up unbounded work. A request that runs past the timeout is answered
//! 504; an invocation it started still finishes and is recorded (invocations
//! run on their own tasks).

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
}

impl Limiter {
    pub fn new(max_concurrency: usize, max_queue: usize, timeout: Duration) -> Limiter {
        Limiter {
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            max_queue,
            timeout,
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
        Err(_) => ApiError::new(
            ErrorKind::Timeout,
            format!(
                "the request took longer than the server's {} ms limit",
                limiter.timeout.as_millis()
            ),
        )
        .with_status(StatusCode::GATEWAY_TIMEOUT)
        .into_response(),
    }
}
