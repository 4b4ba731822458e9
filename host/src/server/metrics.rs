//! `GET /metrics` on its own listener (`--metrics-listen ADDR`): the
//! Prometheus exposition of [`crate::observe::metrics`].
//!
//! A separate listener, not a route of the API: API keys belong to one
//! tenant, and the metrics cover every tenant (their names are labels), so
//! no API key may read them; the operator binds this address where only
//! the scraper reaches it. It also answers while the API is at its limits
//! (it takes no API slot), which is when it is needed most.

use super::App;
use crate::observe;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the approvals-pending gauge is read from the store at most.
const PENDING_EVERY: Duration = Duration::from_secs(10);
/// Pending approvals counted per tenant at most (the gauge saturates).
const PENDING_CAP: i64 = 1_000;
/// Tenants whose pending approvals are counted at most.
const PENDING_TENANTS: usize = 1_000;

/// The metrics listener's state.
pub struct Scrape {
    app: Arc<App>,
    pending_read: Mutex<Option<Instant>>,
}

/// The metrics router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(Arc::new(Scrape {
            app,
            pending_read: Mutex::new(None),
        }))
}

async fn metrics(State(s): State<Arc<Scrape>>) -> Response {
    let (running, queued) = s.app.limiter.slot_counts();
    observe::metrics::slots(running, queued);
    refresh_pending(&s).await;
    match observe::metrics::render() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The pending-approvals gauge, from the store (so every replica reports
/// the fleet's figure), read at most every [`PENDING_EVERY`].
async fn refresh_pending(s: &Scrape) {
    {
        let mut last = s.pending_read.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < PENDING_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    let storage = &s.app.storage;
    let tenants = match storage.audit_chains().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("metrics: listing tenants: {}", e.message);
            return;
        }
    };
    let now = crate::clock::now_ms();
    for tenant in tenants.iter().take(PENDING_TENANTS) {
        match storage
            .approval_list(
                &tenant.as_str().into(),
                Some(crate::storage::ApprovalStatus::Pending),
                now,
                None,
                PENDING_CAP,
            )
            .await
        {
            Ok(pending) => observe::metrics::approvals_pending(tenant, pending.len()),
            Err(e) => tracing::warn!(%tenant, "metrics: pending approvals: {}", e.message),
        }
    }
}

/// Drain histogram samples every few seconds, whether or not anyone
/// scrapes (samples are buffered until then).
pub async fn upkeep() {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        observe::metrics::upkeep();
    }
}
