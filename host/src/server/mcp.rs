//! `/mcp`: MCP over Streamable HTTP (rmcp's `StreamableHttpService` around
//! [`crate::mcp::McpServer`]), and the RFC 9728 protected-resource
//! metadata.
//!
//! A request to `/mcp` passes, in order:
//!
//! 1. [`guard`]: the `Host` must be one this server answers to and an
//!    `Origin`, if sent, the server's own or an allowed one (DNS rebinding,
//!    cross-site requests): 403. A 401 from below gets
//!    `WWW-Authenticate: Bearer resource_metadata="…"`, pointing at
//!    `/.well-known/oauth-protected-resource/mcp`.
//! 2. [`super::limit`], exactly as for `/v1`: the API key (role `invoke`;
//!    `Authorization` header only, never a query string) and the route's
//!    access from the headers, the body's bytes, a fair per-tenant slot,
//!    the deadline. `POST` is the only method (`GET`, `DELETE`: 405).
//! 3. [`identity`]: the caller's tenant, key id and slot go into the
//!    request's extensions as an [`mcp::Caller`]; the slot is held by the
//!    invocation until it ends.
//! 4. [`plain_call`]: the plain 2026-07-28 `tools/call` is answered here
//!    (rmcp's model types, the same [`McpServer`] code) without rmcp's
//!    per-request service; anything else passes on untouched.
//! 5. rmcp: JSON-RPC, the protocol-version and `Mcp-Method`/`Mcp-Name`
//!    header checks against the body (-32020, -32022: 400), `resultType`,
//!    caching hints, notifications (202), JSON or SSE answers.
//!
//! `subscriptions/listen` (2026-07-28) is a long-lived SSE answer to one
//! POST: it gives up its request slot at once ([`mcp::Hold`]) and ends at
//! shutdown with the listen's final result, after which rmcp closes the
//! stream: a server with open streams still stops.
//!
//! **No sessions.** The service runs stateless (rmcp's
//! `legacy_session_mode: false`, `NeverSessionManager`): 2026-07-28 has no
//! sessions, and 2025-11-25/2025-06-18 clients are served without an
//! `Mcp-Session-Id` (the revision makes it optional), each request on its
//! own. No request depends on a process's memory of an earlier one, so any
//! replica behind one address serves any request. What 2025-11-25 sessions
//! would add — a standalone `GET` stream for server-initiated messages — is
//! not offered (405, as that revision allows).

use super::App;
use super::auth::Caller;
use super::tools::ToolCache;
use crate::error::{ErrorKind, Result};
use crate::mcp::{self, McpServer, Shared};
use crate::tool::Tool;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{CallToolRequestParams, RequestId, ServerJsonRpcMessage, ServerResult};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use std::sync::Arc;

/// Where MCP clients may come from.
#[derive(Debug, Clone, Default)]
pub struct McpConfig {
    /// `Host` values `/mcp` answers to besides the loopback names
    /// (`localhost`, `127.0.0.1`, `[::1]`, any port): `name` (any port) or
    /// `name:port`.
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed besides the server's own
    /// (`https://app.example.com`, with a port if not the scheme's default).
    pub allowed_origins: Vec<String>,
    /// The server's public base URL (`https://tools.example.com`): the
    /// resource the protected-resource metadata names. Default: `http://`
    /// and the request's (allowed) `Host`.
    pub public_url: Option<String>,
}

/// The tools of a tenant, from a loaded-tool cache (the server's; `host
/// mcp`'s own).
impl mcp::Tools for ToolCache {
    fn list<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
    ) -> crate::BoxFuture<'a, Result<mcp::Listing>> {
        Box::pin(self.enabled(tenant))
    }

    fn get<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
        name: &'a str,
    ) -> crate::BoxFuture<'a, Result<Arc<Tool>>> {
        Box::pin(ToolCache::get(self, tenant, name))
    }

    fn version<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
        name: &'a str,
        version: &'a str,
    ) -> crate::BoxFuture<'a, Result<Arc<Tool>>> {
        Box::pin(self.get_version(tenant, name, version))
    }
}

/// The server's tools (its [`ToolCache`]).
struct AppTools(Arc<App>);

impl mcp::Tools for AppTools {
    fn list<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
    ) -> crate::BoxFuture<'a, Result<mcp::Listing>> {
        Box::pin(self.0.tools.enabled(tenant))
    }

    fn get<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
        name: &'a str,
    ) -> crate::BoxFuture<'a, Result<Arc<Tool>>> {
        Box::pin(self.0.tools.get(tenant, name))
    }

    fn version<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
        name: &'a str,
        version: &'a str,
    ) -> crate::BoxFuture<'a, Result<Arc<Tool>>> {
        Box::pin(self.0.tools.get_version(tenant, name, version))
    }
}

/// The `/mcp` route and the protected-resource metadata, with their layers.
pub fn router(app: Arc<App>, config: &super::ServeConfig) -> Router<Arc<App>> {
    let shared = Arc::new(Shared {
        tools: Arc::new(AppTools(app.clone())),
        service: app.service.clone(),
        governed: app.governed.clone(),
        limits: app.limits.clone(),
        changes: app.tool_changes.clone(),
    });
    let rmcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // Host and Origin are checked by `guard`, before the key.
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(config.max_body)
        .with_sse_keep_alive(Some(std::time::Duration::from_secs(15)));
    let plain = McpServer::per_request(shared.clone());
    let service = StreamableHttpService::new(
        move || Ok(McpServer::per_request(shared.clone())),
        Arc::new(NeverSessionManager::default()),
        rmcp_config,
    );
    let mcp = Router::new()
        .route_service(
            "/mcp",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(app.clone(), identity))
                .layer(axum::middleware::from_fn_with_state(plain, plain_call))
                .service(service),
        )
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::limit::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .merge(mcp)
        .route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            axum::routing::get(resource_metadata),
        )
}

/// Host and Origin checks, and the 401 challenge.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let config = &app.mcp;
    let host = match allowed_host(request.headers(), config) {
        Ok(h) => h,
        Err(refusal) => return forbidden(refusal),
    };
    if let Err(refusal) = allowed_origin(request.headers(), &host, config) {
        return forbidden(refusal);
    }
    let mut response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    if response.status() == StatusCode::UNAUTHORIZED {
        let url = format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            base_url(config, &host)
        );
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer resource_metadata=\"{url}\"")) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    response
}

/// The authenticated caller (from `limit`) as MCP's caller, with the
/// request's slot and a way to check its key again.
async fn identity(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return super::problem::ApiError::new(ErrorKind::Unauthenticated, "no API key")
            .into_response();
    };
    let hold = super::limit::current_slot()
        .map(|s| mcp::Hold::new(s as Arc<dyn std::any::Any + Send + Sync>));
    let mut authorization = HeaderMap::new();
    if let Some(v) = request.headers().get(header::AUTHORIZATION) {
        authorization.insert(header::AUTHORIZATION, v.clone());
    }
    let recheck = KeyRecheck {
        app,
        authorization,
        tenant: caller.tenant().clone(),
    };
    request.extensions_mut().insert(mcp::Caller {
        tenant: caller.tenant().clone(),
        principal: caller.key.id.to_string(),
        hold,
        recheck: Some(Arc::new(recheck)),
    });
    next.run(request).await
}

/// The request's API key, authenticated again as `limit` did (through the
/// key cache: a revocation anywhere is seen within its TTL).
struct KeyRecheck {
    app: Arc<App>,
    authorization: HeaderMap,
    tenant: crate::ids::TenantId,
}

impl mcp::Recheck for KeyRecheck {
    fn still_allowed(&self) -> crate::BoxFuture<'_, bool> {
        Box::pin(async move {
            let access = super::route_access(&http::Method::POST, "/mcp");
            match super::auth::authenticate(&self.app, &self.authorization).await {
                Ok(c) => *c.tenant() == self.tenant && access.is_some_and(|a| c.allowed(a).is_ok()),
                Err(_) => false,
            }
        })
    }
}

/// A JSON-RPC `tools/call` request, nothing more.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainRequest {
    jsonrpc: String,
    id: RequestId,
    method: String,
    params: CallToolRequestParams,
}

/// The header a plain call sends exactly once, if it has this value.
fn one_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values
        .next()
        .is_none()
        .then(|| first.to_str().ok())
        .flatten()
}

/// The plain 2026-07-28 `tools/call`, the one every agent's call is,
/// answered without rmcp's per-request service (a one-shot transport, a
/// service loop, a peer and two tasks per request: ≈ 10% of a call's CPU
/// time). What makes it plain is checked conservatively, and anything else
/// — another method or revision, a header that does not agree with the
/// body exactly, `Mcp-Param-*` headers, a session, a progress token or log
/// level (notifications before the result), a malformed or refused request
/// — goes to rmcp untouched, which answers it (errors included) as it
/// answers any request. The answer is rmcp's own types, made and
/// serialised as rmcp makes them (`resultType`, cache hints).
async fn plain_call(State(server): State<McpServer>, request: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let headers = request.headers();
    // Only a plain list of media types (no parameters, no quoting: no
    // `q=0` that refuses one) is read here; rmcp reads any other.
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .map(|v| v.to_str().unwrap_or(";"))
        .collect();
    let simple_accept = accept.iter().all(|v| !v.contains([';', '"']));
    let accepts = |t: &str| {
        accept
            .iter()
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(t))
    };
    let is_json = |c: &str| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json")
    };
    // The plain path wants exactly one Content-Type; the duplicate-key check
    // below goes by the first, as rmcp reads it (a second header must not
    // skip it).
    let json_body = one_header(headers, "content-type").is_some_and(is_json);
    let first_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(is_json);
    let plain_headers = request.method() == http::Method::POST
        && one_header(headers, "mcp-protocol-version") == Some("2026-07-28")
        && one_header(headers, "mcp-method") == Some("tools/call")
        && one_header(headers, "mcp-name").is_some()
        && !headers.contains_key("mcp-session-id")
        && !headers.keys().any(|k| k.as_str().starts_with("mcp-param-"))
        && json_body
        && simple_accept
        && accepts("application/json")
        && accepts("text/event-stream");
    let caller = request.extensions().get::<mcp::Caller>().cloned();
    let Some(caller) = caller else {
        return next.run(request).await;
    };
    if !(first_json && request.method() == http::Method::POST) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // `limit` read the body into memory: collecting it copies nothing.
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return super::problem::ApiError::new(ErrorKind::InvalidRequest, "unreadable body")
            .into_response();
    };
    // A message naming one key twice is refused, as on `/v1`: this server
    // (and rmcp) would read the last, a proxy in front may read the first.
    if let Some(why) = crate::value::repeated_key(&bytes) {
        return invalid_message(why);
    }
    if !plain_headers {
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    }
    let call = serde_json::from_slice::<PlainRequest>(&bytes)
        .ok()
        .filter(|c| {
            c.jsonrpc == "2.0"
                && c.method == "tools/call"
                && one_header(&parts.headers, "mcp-name") == Some(c.params.name.as_ref())
        });
    let answered = match &call {
        Some(c) => server.call_plain(&caller, &c.params).await,
        None => None,
    };
    let (Some(result), Some(call)) = (answered, call) else {
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    };
    let mut result = ServerResult::from(result);
    result.fill_missing_cache_hints();
    match serde_json::to_vec(&ServerJsonRpcMessage::response(result, call.id)) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => super::problem::ApiError::new(
            ErrorKind::Internal,
            format!("serialising the MCP answer: {e}"),
        )
        .into_response(),
    }
}

/// A JSON-RPC `Invalid Request` answer (HTTP 400) for a message this server
/// will not read.
fn invalid_message(why: String) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32600, "message": format!("Invalid Request: {why}")},
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn forbidden(message: String) -> Response {
    super::problem::ApiError::new(ErrorKind::Forbidden, message)
        .with_status(StatusCode::FORBIDDEN)
        .into_response()
}

/// The request's `Host` (`name[:port]`, lowercase), if this server answers
/// to it.
fn allowed_host(headers: &HeaderMap, config: &McpConfig) -> std::result::Result<String, String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .ok_or_else(|| "the request has no valid Host header".to_string())?;
    let name = host.host().trim_matches(['[', ']']).to_ascii_lowercase();
    let port = host.port_u16();
    let loopback = ["localhost", "127.0.0.1", "::1"].contains(&name.as_str());
    let listed = config.allowed_hosts.iter().any(|a| {
        let Ok(a) = a.parse::<http::uri::Authority>() else {
            return false;
        };
        a.host()
            .trim_matches(['[', ']'])
            .eq_ignore_ascii_case(&name)
            && a.port_u16().is_none_or(|p| Some(p) == port)
    });
    let public = config
        .public_url
        .as_deref()
        .and_then(|u| u.parse::<http::Uri>().ok())
        .and_then(|u| {
            u.host()
                .map(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(&name))
        })
        .unwrap_or(false);
    if loopback || listed || public {
        Ok(host.as_str().to_ascii_lowercase())
    } else {
        Err(format!(
            "Host `{}` is not one this server answers to on /mcp (DNS rebinding protection; \
             the operator allows more with --mcp-allow-host)",
            host.as_str()
        ))
    }
}

/// An `Origin`, if sent, must be the server's own (`http(s)://` + Host) or
/// one the operator allowed.
fn allowed_origin(
    headers: &HeaderMap,
    host: &str,
    config: &McpConfig,
) -> std::result::Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map(|o| o.trim().to_ascii_lowercase())
        .map_err(|_| "the Origin header is not text".to_string())?;
    let own = [format!("http://{host}"), format!("https://{host}")];
    let public = config
        .public_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_ascii_lowercase());
    if own.contains(&origin)
        || public.as_deref() == Some(origin.as_str())
        || config
            .allowed_origins
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(&origin))
    {
        Ok(())
    } else {
        Err(format!(
            "Origin `{origin}` may not use /mcp (the operator allows origins with --mcp-allow-origin)"
        ))
    }
}

fn base_url(config: &McpConfig, host: &str) -> String {
    match &config.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("http://{host}"),
    }
}

/// RFC 9728 protected-resource metadata for `/mcp`: bearer tokens in the
/// `Authorization` header (Toolhost API keys, `host keys create`); no
/// `authorization_servers` yet (OAuth can be added without changing
/// clients that read this).
async fn resource_metadata(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let host = match allowed_host(&headers, &app.mcp) {
        Ok(h) => h,
        Err(refusal) => return forbidden(refusal),
    };
    let base = base_url(&app.mcp, &host);
    (
        [(header::CACHE_CONTROL, "max-age=3600")],
        axum::Json(json!({
            "resource": format!("{base}/mcp"),
            "bearer_methods_supported": ["header"],
            "resource_name": "Toolhost MCP server",
        })),
    )
        .into_response()
}
