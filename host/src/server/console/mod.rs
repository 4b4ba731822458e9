//! The web console at `/console`: approvals inbox, invocations, tools,
//! budgets, audit and reports, for the people who approve, audit and
//! operate. Served by `host serve` itself; HTML rendered on the server
//! ([`maud`]: markup is Rust, every interpolated value is escaped), one
//! embedded stylesheet, no JavaScript at all.
//!
//! It is one more adapter over the functions the API uses: a signed-in
//! key is a [`Caller`], each page is allowed exactly when the API route it
//! mirrors is ([`PAGES`], checked with [`super::route_access`]), lookups
//! are scoped to the key's tenant, and actions call what the API calls
//! (decisions: [`super::approvals::decide_as`]; tools: the registry and
//! the tool cache, as `server::tools` does).
//!
//! Around every request ([`guard`]): a bound on console requests at once
//! and the request deadline; the session ([`session`]: a signed cookie,
//! re-checked against the key store each time); on every POST, the form's
//! CSRF token and the `Origin`; and on every answer, a strict
//! Content-Security-Policy (`default-src 'self'`, no scripts, no inline
//! styles), `nosniff`, `frame-ancestors 'none'`, `no-store`.

pub mod chart;
mod pages;
pub mod session;
mod view;

use super::App;
use super::auth::{Access, Caller};
use crate::error::{Error, ErrorKind};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use session::Sessions;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};

/// Console requests served at once; more wait (until the deadline).
pub const MAX_CONCURRENT: usize = 16;

/// Largest form body.
pub const MAX_FORM: usize = 16 << 10;

/// Largest audit export the console hands out (narrow the time range for
/// more).
pub const MAX_EXPORT: usize = 64 << 20;

/// Audit exports built at once per server (so at most this many times
/// [`MAX_EXPORT`] of memory).
pub const MAX_EXPORTS: usize = 2;

/// The console's Content-Security-Policy: only this server's own
/// stylesheet; no script, no inline style, no frames, forms only to itself.
pub const CSP: &str = "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's state.
pub struct Console {
    pub app: Arc<App>,
    sessions: OnceCell<Sessions>,
    slots: Arc<Semaphore>,
    /// One audit verification at a time (it reads the whole chain).
    verifying: Semaphore,
    /// Audit exports at once (each is built in memory, up to
    /// [`MAX_EXPORT`]).
    exporting: Semaphore,
    timeout: Duration,
}

impl Console {
    /// The session signer, its secret read (or created) in the store once.
    async fn sessions(&self) -> crate::Result<&Sessions> {
        self.sessions
            .get_or_try_init(|| async {
                let stored = self
                    .app
                    .storage
                    .meta_init(session::SECRET_META_KEY, &session::new_secret())
                    .await?;
                Sessions::from_hex(&stored)
            })
            .await
    }
}

/// The console's pages: each is allowed when the API route it mirrors is
/// (same roles), or, for the audit page (no API route), for the `audit`
/// role. The navigation shows the allowed ones.
pub const PAGES: &[(&str, &str, Mirror)] = &[
    (
        "/console/approvals",
        "Approvals",
        Mirror::Api("GET", "/v1/approvals"),
    ),
    (
        "/console/invocations",
        "Invocations",
        Mirror::Api("GET", "/v1/invocations"),
    ),
    ("/console/tools", "Tools", Mirror::Api("GET", "/v1/tools")),
    (
        "/console/budgets",
        "Budgets",
        Mirror::Api("GET", "/v1/tasks/{task_id}/usage"),
    ),
    ("/console/stats", "Reports", Mirror::Api("GET", "/v1/stats")),
    (
        "/console/audit",
        "Audit",
        Mirror::Roles(&[crate::keys::Role::Audit]),
    ),
];

/// Whose rules a console page or action follows.
#[derive(Debug, Clone, Copy)]
pub enum Mirror {
    /// The API route's (method, route) in `ROUTES`.
    Api(&'static str, &'static str),
    /// These roles (`admin` holds all).
    Roles(&'static [crate::keys::Role]),
}

impl Mirror {
    fn access(self) -> Access {
        match self {
            Mirror::Api(method, route) => {
                let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
                // A route missing from the table is refused, as the API would.
                super::route_access(&method, route).unwrap_or(Access::OneOf(&[]))
            }
            Mirror::Roles(roles) => Access::OneOf(roles),
        }
    }
}

/// Whether `caller` may use what `mirror` names.
pub fn may(caller: &Caller, mirror: Mirror) -> bool {
    match mirror.access() {
        Access::OneOf([]) => false,
        access => caller.allowed(access).is_ok(),
    }
}

/// Refuse unless `caller` may use what `mirror` names (the API's message).
fn require(caller: &Caller, mirror: Mirror) -> Result<(), PageError> {
    match mirror.access() {
        Access::OneOf([]) => Err(PageError::from(Error::new(
            ErrorKind::Forbidden,
            "no key may do this",
        ))),
        access => caller.allowed(access).map_err(|e| PageError::from(e.error)),
    }
}

/// A signed-in request: the caller (the session's key, as stored now) and
/// its forms' token.
#[derive(Clone)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
}

/// An error shown as a page, with the status the API would answer.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub error: Error,
}

impl From<Error> for PageError {
    fn from(error: Error) -> PageError {
        let api: super::problem::ApiError = error.into();
        PageError {
            status: api.status,
            error: api.error,
        }
    }
}

impl From<super::problem::ApiError> for PageError {
    fn from(e: super::problem::ApiError) -> PageError {
        PageError {
            status: e.status,
            error: e.error,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(kind = %self.error.kind, "console: {}", self.error.message);
        }
        let body = view::error_page(self.status, &self.error);
        (self.status, body).into_response()
    }
}

/// The console's routes (relative to `/console`), with its guard.
pub fn router(app: Arc<App>, config: &super::ServeConfig) -> Router {
    let console = Arc::new(Console {
        app,
        sessions: OnceCell::new(),
        slots: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        verifying: Semaphore::new(1),
        exporting: Semaphore::new(MAX_EXPORTS),
        timeout: config.request_timeout,
    });
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/assets/console.css", get(pages::stylesheet))
        .route("/assets/favicon.svg", get(pages::favicon))
        .route("/approvals", get(pages::approvals))
        .route("/approvals/{id}", get(pages::approval))
        .route("/approvals/{id}/approve", post(pages::approve))
        .route("/approvals/{id}/deny", post(pages::deny))
        .route("/invocations", get(pages::invocations))
        .route("/invocations/{id}", get(pages::invocation))
        .route("/tools", get(pages::tools))
        .route("/tools/{name}", get(pages::tool))
        .route("/tools/{name}/deploy", post(pages::deploy))
        .route("/tools/{name}/disable", post(pages::disable))
        .route("/tools/{name}/enable", post(pages::enable))
        .route("/budgets", get(pages::budgets))
        .route("/audit", get(pages::audit))
        .route("/audit/verify", post(pages::verify))
        .route("/audit/export", get(pages::export))
        .route("/stats", get(pages::stats))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .layer(axum::middleware::map_response(headers))
        .with_state(console)
}

/// Security headers on every console answer.
async fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Paths served without a session.
fn public(path: &str) -> bool {
    matches!(
        path,
        "/login" | "/assets/console.css" | "/assets/favicon.svg"
    )
}

/// Around every console request, within the request deadline: a POST's
/// `Origin` and its form body, read within [`FORM_READ`] and before a slot
/// is taken (a client that sends its body slowly holds a connection, not
/// one of the console's slots); then a console slot; the session
/// (signed-in pages redirect to the sign-in form without one); and for
/// every POST the form's token (the verified session's, or the sign-in
/// form's).
async fn guard(State(c): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + c.timeout;
    let work =
        async {
            let request = read_form(request).await?;
            let _slot =
                c.slots.clone().acquire_owned().await.map_err(|_| {
                    PageError::from(Error::new(ErrorKind::Overloaded, "shutting down"))
                })?;
            guarded(&c, request, next).await
        };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => e.into_response(),
        Err(_) => PageError {
            status: StatusCode::GATEWAY_TIMEOUT,
            error: Error::new(
                ErrorKind::Timeout,
                format!(
                    "the request took longer than the server's {} ms limit",
                    c.timeout.as_millis()
                ),
            ),
        }
        .into_response(),
    }
}

/// How long a console form's body may take to arrive.
pub const FORM_READ: std::time::Duration = std::time::Duration::from_secs(10);

/// A POST's body, read whole (at most [`MAX_FORM`] bytes, within
/// [`FORM_READ`]) once its `Origin` is this console's; other requests as
/// they are.
async fn read_form(request: Request) -> Result<Request, PageError> {
    if request.method() != Method::POST {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
    if !session::same_origin(&parts.headers) {
        return Err(forbidden_form(
            "this form was not sent from this console (its Origin is another site's)",
        ));
    }
    let read = tokio::time::timeout(FORM_READ, axum::body::to_bytes(body, MAX_FORM));
    let body = match read.await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return Err(PageError::from(Error::new(
                ErrorKind::PayloadTooLarge,
                format!("a console form is at most {MAX_FORM} bytes"),
            )));
        }
        Err(_) => {
            return Err(PageError {
                status: StatusCode::REQUEST_TIMEOUT,
                error: Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the form's body did not arrive within {} s",
                        FORM_READ.as_secs()
                    ),
                ),
            });
        }
    };
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

fn forbidden_form(why: &str) -> PageError {
    PageError {
        status: StatusCode::FORBIDDEN,
        error: Error::new(ErrorKind::Forbidden, why),
    }
}

/// The session and the form token, for a request whose form body (if a
/// POST) [`read_form`] has read.
async fn guarded(c: &Arc<Console>, request: Request, next: Next) -> Result<Response, PageError> {
    let sessions = c.sessions().await?;
    let path = request.uri().path().to_string();
    let post = request.method() == Method::POST;
    let now = crate::clock::now_ms();
    let (parts, body) = request.into_parts();
    let body = if post {
        // Already in memory: this only takes it.
        axum::body::to_bytes(body, MAX_FORM)
            .await
            .map_err(|e| PageError::from(Error::internal(format!("the form body: {e}"))))?
    } else {
        axum::body::Bytes::new()
    };
    let token = || form_field(&body, "csrf").unwrap_or_default();
    let mut request = Request::from_parts(parts, axum::body::Body::from(body.clone()));
    if public(&path) {
        if post && path == "/login" {
            let ok = session::cookies(request.headers(), session::LOGIN_COOKIE)
                .any(|cookie| sessions.check_login(cookie, &token(), now));
            if !ok {
                return Err(forbidden_form(
                    "the sign-in form expired or did not come from this console; load it again",
                ));
            }
        }
        return Ok(next.run(request).await);
    }
    let Some((session, claims)) = resolve(c, sessions, request.headers(), now).await? else {
        return Ok(view::to_login());
    };
    // The token of the session cookie that verified, not of any cookie
    // that merely parses with the same key id.
    if post && !sessions.check_csrf(&claims, &token()) {
        return Err(forbidden_form(
            "this form has no valid CSRF token (it is stale, or came from another site); reload the page",
        ));
    }
    request.extensions_mut().insert(session);
    Ok(next.run(request).await)
}

async fn resolve(
    c: &Console,
    sessions: &Sessions,
    headers: &axum::http::HeaderMap,
    now: i64,
) -> Result<Option<(Session, session::Claims)>, PageError> {
    for value in session::cookies(headers, session::SESSION_COOKIE) {
        let Some(claims) = Sessions::parse(value) else {
            continue;
        };
        let Some(key) = c
            .app
            .storage
            .key_get(&claims.key_id.as_str().into())
            .await?
        else {
            continue;
        };
        if key.revoked_ms.is_some() {
            continue;
        }
        if let Some(claims) = sessions.check(value, &key, now) {
            let csrf = sessions.csrf(&claims);
            return Ok(Some((
                Session {
                    caller: Caller { key },
                    csrf,
                },
                claims,
            )));
        }
    }
    Ok(None)
}

/// A field of a urlencoded form body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
