//! `host serve`: the HTTP API for orchestrators, operators and approvers.
//!
//! One [`App`] holds what every request needs (storage, registry, loaded
//! tools, the host and its governed gate); handlers live by resource:
//! [`tools`] (list, upload, describe, deploy, disable), [`invoke`],
//! [`records`] (invocations, task budgets). Around them: [`limit`]
//! (authentication and the route's role from the headers, via [`auth`] and
//! `ROUTES`, before any body is read; body memory, [`bodies`]; slots shared
//! fairly among tenants, [`fair`]; the request deadline), structured request
//! logs, and RFC 9457 problems ([`problem`]) for everything that is not an
//! invocation outcome.
//!
//! Invariant: an invocation, once admitted, runs to completion on its own
//! task and is recorded, even if its client goes away or its request times
//! out; shutdown waits for those tasks, then flushes the audit trail.

pub mod approvals;
pub mod auth;
pub mod bodies;
pub mod console;
pub mod fair;
pub mod invoke;
pub mod limit;
pub mod listen;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod records;
pub mod stats;
pub mod tools;

use crate::error::{Error, Result};
use crate::gate::{Gate, Governed};
use crate::invoke::{Host, Outcome};
use crate::limits::Limits;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::service::InvocationService;
use crate::storage::Storage;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest request body, except uploads.
    pub max_body: usize,
    /// Largest component upload.
    pub max_upload: usize,
    /// Deadline for one request, queueing included.
    pub request_timeout: Duration,
    /// Requests served at once; more wait in the queue.
    pub max_concurrency: usize,
    /// Requests waiting for a slot; more are refused with 503.
    pub max_queue: usize,
    /// Requests of one tenant served at once (default: half of
    /// `max_concurrency`, at least 1); more wait in the tenant's queue.
    pub tenant_max_concurrency: usize,
    /// Requests of one tenant waiting for a slot (default: half of
    /// `max_queue`); more are refused with 429 `tenant_overloaded`.
    pub tenant_max_queue: usize,
    /// Bytes of request bodies (uploads excepted) held in memory at once;
    /// one tenant holds at most half.
    pub max_body_memory: usize,
    /// Default invocation limits (a policy may set others per tool).
    pub limits: Limits,
    /// How long shutdown waits for running invocations.
    pub shutdown_grace: Duration,
    /// How often to look for a new stored policy.
    pub policy_poll: Duration,
    /// How long answers to `Idempotency-Key` requests are kept.
    pub idempotency_retention: Duration,
    /// How long approval requests wait for a decision.
    pub approval_ttl: Duration,
    /// How often audit records past the policy's `logging.retain_days` are
    /// pruned (with signed anchors).
    pub retention_every: Duration,
    /// How long API keys and tool names' entries are remembered: changes
    /// made by `host keys`/`host tools` on the data dir take effect within
    /// it.
    pub state_ttl: Duration,
    /// Callback URL patterns accepted with invoke requests (none: no
    /// callbacks).
    pub callback_allow: Vec<String>,
    /// How long a client may take to send a request head (idle keep-alive
    /// included) before its connection is closed.
    pub header_timeout: Duration,
    /// Most connections open at once; past it the server stops accepting.
    pub max_connections: usize,
    /// How components are compiled (uploads; tools this node has not
    /// compiled yet) and where their artifacts are kept.
    pub registry: crate::registry::RegistryOptions,
    /// How many loaded tools are kept.
    pub loaded_tools: tools::CacheBounds,
    /// Where `GET /metrics` is served (its own listener; none: no
    /// endpoint). Metrics are recorded once `observe::metrics::install`
    /// ran.
    pub metrics_listen: Option<String>,
    /// Where MCP clients may come from (`/mcp`).
    pub mcp: mcp::McpConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_body: 1 << 20,
            max_upload: 64 << 20,
            request_timeout: Duration::from_secs(60),
            max_concurrency: 64,
            max_queue: 1024,
            tenant_max_concurrency: 32,
            tenant_max_queue: 512,
            max_body_memory: 64 << 20,
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(30),
            policy_poll: Duration::from_secs(2),
            idempotency_retention: crate::idempotency::DEFAULT_RETENTION,
            approval_ttl: Duration::from_millis(
                crate::gate::governed::DEFAULT_APPROVAL_TTL_MS as u64,
            ),
            retention_every: Duration::from_secs(3600),
            state_ttl: Duration::from_secs(1),
            callback_allow: Vec::new(),
            header_timeout: Duration::from_secs(30),
            max_connections: 4096,
            registry: crate::registry::RegistryOptions::default(),
            loaded_tools: tools::CacheBounds::default(),
            metrics_listen: None,
            mcp: mcp::McpConfig::default(),
        }
    }
}

/// What every request handler shares.
pub struct App {
    pub storage: Arc<dyn Storage>,
    pub registry: Registry,
    pub tools: tools::ToolCache,
    pub host: Arc<Host>,
    /// Where every invocation goes.
    pub service: Arc<InvocationService>,
    pub governed: Arc<Governed>,
    pub limiter: limit::Limiter,
    pub keys: auth::KeyCache,
    pub callbacks: crate::callback::Callbacks,
    pub limits: Limits,
    /// Where MCP clients may come from.
    pub mcp: mcp::McpConfig,
    /// Tool-list changes for MCP `subscriptions/listen` streams (stopped at
    /// shutdown, which ends the streams).
    pub tool_changes: Arc<crate::mcp::changes::Changes>,
    /// Decisions in flight (each on its own task).
    pub tracker: TaskTracker,
    /// False once shutdown began.
    ready: AtomicBool,
    /// The stored policy version in force at start (0: one given directly).
    policy_version: i64,
}

/// Note an invocation in the request's span: its one log line (when the
/// response is sent) says which invocation it was and how it ended.
pub fn record_in_span(outcome: &Outcome) {
    let span = tracing::Span::current();
    span.record("invocation_id", outcome.invocation_id.as_str());
    span.record("function", outcome.function.as_str());
    span.record("outcome", outcome.status.as_str());
    if let Some(e) = &outcome.error {
        span.record("kind", e.kind.as_str());
    }
    span.record("wall_ms", outcome.usage.wall_ms);
}

/// A bound server, ready to run.
pub struct Server {
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    /// `GET /metrics`'s own listener.
    metrics: Option<tokio::net::TcpListener>,
    config: ServeConfig,
}

impl Server {
    /// Bind `listen` (port 0 picks a free port). `policy_version` is the
    /// stored policy version the gate's policy came from (0 if none).
    pub async fn bind(
        listen: &str,
        storage: Arc<dyn Storage>,
        runtime: Arc<Runtime>,
        governed: Arc<Governed>,
        policy_version: i64,
        config: ServeConfig,
    ) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::invalid_args(format!("cannot listen on {listen}: {e}")))?;
        let metrics = match &config.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::invalid_args(format!("--metrics-listen: cannot listen on {addr}: {e}"))
            })?),
            None => None,
        };
        let registry =
            Registry::with_options(storage.clone(), runtime.clone(), config.registry.clone())?;
        governed.set_approval_ttl(config.approval_ttl);
        let gate: Arc<dyn Gate> = governed.clone();
        let host = Arc::new(Host::new(runtime, gate));
        let service = Arc::new(InvocationService::new(
            host.clone(),
            Some(crate::service::Keys {
                audit: governed.audit().clone(),
                retention: config.idempotency_retention,
            }),
            governed.instance().clone(),
        ));
        let callbacks = crate::callback::Callbacks::new(&config.callback_allow)?;
        service.set_callbacks(callbacks.clone());
        let app = Arc::new(App {
            tools: tools::ToolCache::new(
                registry.clone(),
                storage.clone(),
                config.state_ttl,
                config.loaded_tools,
            ),
            keys: auth::KeyCache::new(config.state_ttl),
            callbacks,
            registry,
            host,
            service,
            governed,
            limiter: limit::Limiter::new(limit::LimiterConfig {
                slots: fair::FairLimits {
                    max_running: config.max_concurrency,
                    max_queue: config.max_queue,
                    tenant_running: config.tenant_max_concurrency,
                    tenant_queue: config.tenant_max_queue,
                },
                timeout: config.request_timeout,
                max_body: config.max_body,
                max_body_memory: config.max_body_memory,
            }),
            limits: config.limits.clone(),
            mcp: config.mcp.clone(),
            tool_changes: crate::mcp::changes::Changes::new(storage.clone(), config.state_ttl),
            tracker: TaskTracker::new(),
            ready: AtomicBool::new(true),
            policy_version,
            storage,
        });
        Ok(Server {
            app,
            listener,
            metrics,
            config,
        })
    }

    /// The address `GET /metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::internal(format!("listener address: {e}")))
    }

    /// Serve until `shutdown` resolves; then stop accepting, let requests
    /// and invocations in flight finish (up to the grace period), and flush
    /// the audit trail.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server {
            app,
            listener,
            metrics,
            config,
        } = self;
        let router = router(app.clone(), &config);
        let metrics = metrics.map(|l| {
            let router = metrics::router(app.clone());
            let limits = listen::ConnLimits {
                header_timeout: Duration::from_secs(10),
                max_connections: 64,
                drain: Duration::from_secs(1),
            };
            (
                tokio::spawn(listen::serve(l, router, limits, std::future::pending())),
                tokio::spawn(metrics::upkeep()),
            )
        });
        let watcher = {
            let (governed, every) = (app.governed.clone(), config.policy_poll);
            let version = app.policy_version;
            tokio::spawn(async move { governed.follow_stored_policy(version, every).await })
        };
        let lifecycle = app.service.start_lifecycle();
        let retention = tokio::spawn(enforce_retention(app.clone(), config.retention_every));
        let flag = app.clone();
        let signal = async move {
            shutdown.await;
            flag.ready.store(false, Ordering::SeqCst);
            // Open MCP listen streams end (their final result), so their
            // connections can close.
            flag.tool_changes.stop();
            tracing::info!("shutting down: finishing requests in flight");
        };
        let limits = listen::ConnLimits {
            header_timeout: config.header_timeout,
            max_connections: config.max_connections,
            drain: config.shutdown_grace,
        };
        listen::serve(listener, router, limits, signal).await;
        if let Some((serve, upkeep)) = metrics {
            serve.abort();
            upkeep.abort();
        }
        watcher.abort();
        retention.abort();
        app.tracker.close();
        app.service.tracker().close();
        let drained = async {
            app.tracker.wait().await;
            app.service.tracker().wait().await;
        };
        if tokio::time::timeout(config.shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                running = app.service.tracker().len(),
                "invocations still running after the grace period"
            );
        }
        // Leases end with the process: what still runs is the reaper's.
        for task in lifecycle {
            task.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Who may use each API route (method, route as registered below). The
/// limit layer checks it from the headers before reading a body; the
/// handlers check again. A method missing here is refused (405), never let
/// through.
const ROUTES: &[(&str, &str, auth::Access)] = {
    use crate::keys::Role::{Admin, Approve, Audit, Invoke};
    use auth::Access::{AnyKey, OneOf};
    const ADMIN: auth::Access = OneOf(&[Admin]);
    const INVOKE: auth::Access = OneOf(&[Invoke]);
    const RECORDS: auth::Access = OneOf(&[Invoke, Audit, Approve]);
    &[
        ("GET", "/v1/tools", AnyKey),
        ("POST", "/v1/tools", ADMIN),
        ("GET", "/v1/tools/{tool}", AnyKey),
        ("POST", "/v1/tools/{tool}/deploy", ADMIN),
        ("POST", "/v1/tools/{tool}/disable", ADMIN),
        ("POST", "/v1/tools/{tool}/enable", ADMIN),
        ("POST", "/v1/tools/{tool}/invoke", INVOKE),
        ("POST", "/v1/tools/{tool}/{function}/invoke", INVOKE),
        ("POST", "/v1/tools/{tool}/{function}/{rest}/invoke", INVOKE),
        ("GET", "/v1/approvals", OneOf(&[Approve, Audit])),
        ("GET", "/v1/approvals/{id}", OneOf(&[Approve, Audit])),
        ("POST", "/v1/approvals/{id}/approve", OneOf(&[Approve])),
        ("POST", "/v1/approvals/{id}/deny", OneOf(&[Approve])),
        ("GET", "/v1/invocations", RECORDS),
        ("GET", "/v1/invocations/{id}", RECORDS),
        ("GET", "/v1/tasks/{task_id}/usage", RECORDS),
        ("POST", "/v1/tasks/{task_id}/usage", INVOKE),
        ("GET", "/v1/stats", RECORDS),
        // MCP over Streamable HTTP: POST only (GET and DELETE are 405).
        ("POST", "/mcp", INVOKE),
    ]
};

/// The access rule of `method` on `route` (a matched route pattern).
pub fn route_access(method: &axum::http::Method, route: &str) -> Option<auth::Access> {
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map(|(_, _, access)| *access)
}

/// The routes, with their layers.
pub fn router(app: Arc<App>, config: &ServeConfig) -> Router {
    let api = Router::new()
        .route(
            "/v1/tools",
            get(tools::list)
                .post(tools::upload)
                .layer(DefaultBodyLimit::max(config.max_upload)),
        )
        .route("/v1/tools/{tool}", get(tools::get_one))
        .route("/v1/tools/{tool}/deploy", post(tools::deploy))
        .route("/v1/tools/{tool}/disable", post(tools::disable))
        .route("/v1/tools/{tool}/enable", post(tools::enable))
        .route("/v1/tools/{tool}/invoke", post(invoke::invoke_tool))
        .route(
            "/v1/tools/{tool}/{function}/invoke",
            post(invoke::invoke_function),
        )
        .route(
            "/v1/tools/{tool}/{function}/{rest}/invoke",
            post(invoke::invoke_qualified),
        )
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}", get(approvals::get_one))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/deny", post(approvals::deny))
        .route("/v1/invocations", get(records::list))
        .route("/v1/invocations/{id}", get(records::get_one))
        .route(
            "/v1/tasks/{task_id}/usage",
            get(records::get_usage).post(records::report_usage),
        )
        .route("/v1/stats", get(stats::get))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limit::limit,
        ));
    Router::new()
        .merge(api)
        .merge(mcp::router(app.clone(), config))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::serve))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body))
        .layer(axum::middleware::map_response(problem::ensure_problem))
        // HTML, with its own sessions, limits and headers (not problems).
        .nest_service("/console", console::router(app.clone(), config))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        key = tracing::field::Empty,
                        invocation_id = tracing::field::Empty,
                        function = tracing::field::Empty,
                        outcome = tracing::field::Empty,
                        kind = tracing::field::Empty,
                        wall_ms = tracing::field::Empty,
                    )
                })
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .with_state(app)
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Object)))]
pub async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// The server can take requests: storage answers and it is not shutting
/// down.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "Not ready (shutting down, or storage fails)", body = Object),
    ))]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if !app.ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    match app.storage.health().await {
        Ok(()) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "storage_unavailable", "detail": e.message})),
        )
            .into_response(),
    }
}

/// Prune each tenant's audit chain to the policy's `logging.retain_days`
/// (the longest of the documents that may govern it), at start and then
/// every `every`.
async fn enforce_retention(app: Arc<App>, every: Duration) {
    loop {
        let policy = app.governed.policy();
        let audit = app.governed.audit();
        // One host of a fleet prunes (two would write two anchors).
        match app.storage.lead("retention").await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(every).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("audit retention: {}", e.message);
                tokio::time::sleep(every).await;
                continue;
            }
        }
        match app.storage.audit_chains().await {
            Ok(chains) => {
                for chain in chains {
                    // A chain is its tenant's, `_` included (documents may
                    // name `_` like any other tenant).
                    let Some(days) = policy.retain_days(Some(chain.as_str())) else {
                        continue;
                    };
                    match audit.prune(&chain, days, crate::clock::now_ms()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(%chain, pruned = n, days, "audit retention"),
                        Err(e) => tracing::warn!(%chain, "audit retention: {}", e.message),
                    }
                }
            }
            Err(e) => tracing::warn!("audit retention: {}", e.message),
        }
        tokio::time::sleep(every).await;
    }
}
