//! `/v1/tools`: list (with schemas, in LLM APIs' formats), upload,
//! describe, deploy, disable and enable; and the cache of loaded tools.

use super::App;
use super::auth::Caller;
use super::problem::{ApiError, rejection};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::TenantId;
use crate::keys::Role;
use crate::registry::{Registry, Upload};
use crate::schema;
use crate::storage::{Storage, ToolEntry};
use crate::tool::Tool;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Loaded tools, by tenant, name and version. Each use checks the name's
/// current version (remembered for `ttl`), so a deploy, rollback or disable
/// (by this server at once, by `host` commands on the same data dir within
/// `ttl`) takes effect on the next call. Tools load lazily: a server with
/// many tools starts at once.
///
/// Loading never blocks the async workers or a lock other requests wait on:
/// the first request for a version starts its load on a task of its own
/// (which finishes, and is kept, even if that request goes away); requests
/// for the same version meanwhile wait for that load, not for a lock;
/// requests for other tools are not delayed. A failed load is not kept: the
/// next request tries again. The loaded tools are bounded in number and in
/// compiled-code bytes; past either, the least recently used are dropped
/// (calls running on one keep it until they finish).
pub struct ToolCache {
    registry: Registry,
    storage: Arc<dyn Storage>,
    loaded: Arc<Mutex<Loaded>>,
    bounds: CacheBounds,
    /// Names' entries (current version, disabled), remembered for `ttl`.
    entries: Mutex<HashMap<(TenantId, String), (ToolEntry, std::time::Instant)>>,
    ttl: std::time::Duration,
}

/// How many loaded tools a [`ToolCache`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBounds {
    /// Loaded tool versions kept.
    pub max_tools: usize,
    /// Their compiled code, in bytes, in total.
    pub max_code_bytes: u64,
}

impl Default for CacheBounds {
    fn default() -> Self {
        CacheBounds {
            max_tools: 256,
            max_code_bytes: 2 << 30,
        }
    }
}

/// (tenant, name, version).
type Key = (TenantId, String, String);

/// The result of a load, shared by everyone waiting for it.
type Shared = Option<std::result::Result<Arc<Tool>, Error>>;

enum Slot {
    Ready { tool: Arc<Tool>, used: u64 },
    Loading(tokio::sync::watch::Receiver<Shared>),
}

#[derive(Default)]
struct Loaded {
    slots: HashMap<Key, Slot>,
    /// A use counter: the least recently used has the lowest `used`.
    clock: u64,
    code_bytes: u64,
}

impl Loaded {
    /// Keep a loaded tool; drop the least recently used past the bounds.
    fn keep(&mut self, key: Key, tool: Arc<Tool>, bounds: CacheBounds) {
        self.clock += 1;
        self.code_bytes += tool.code_bytes() as u64;
        let used = self.clock;
        if let Some(Slot::Ready { tool: old, .. }) =
            self.slots.insert(key.clone(), Slot::Ready { tool, used })
        {
            self.code_bytes -= old.code_bytes() as u64;
        }
        loop {
            let ready = self.slots.iter().filter_map(|(k, s)| match s {
                Slot::Ready { used, tool } => Some((*used, k, tool.code_bytes() as u64)),
                Slot::Loading(_) => None,
            });
            let count = ready.clone().count();
            if count <= bounds.max_tools.max(1) && self.code_bytes <= bounds.max_code_bytes {
                return;
            }
            let Some((_, victim, size)) = ready
                .filter(|(_, k, _)| **k != key)
                .min_by_key(|(u, _, _)| *u)
            else {
                return;
            };
            let victim = victim.clone();
            self.slots.remove(&victim);
            self.code_bytes -= size;
        }
    }
}

impl ToolCache {
    /// A cache that re-reads a name's entry after `ttl`: a deploy, rollback
    /// or disable by another process on the data dir takes effect within it
    /// (through this server's API: at once).
    pub fn new(
        registry: Registry,
        storage: Arc<dyn Storage>,
        ttl: std::time::Duration,
        bounds: CacheBounds,
    ) -> ToolCache {
        ToolCache {
            registry,
            storage,
            loaded: Arc::new(Mutex::new(Loaded::default())),
            bounds,
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Forget a name's entry (it was just changed).
    pub fn invalidate(&self, tenant: &TenantId, name: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(tenant.clone(), name.to_string()));
    }

    /// The tool a tenant's name points at now.
    pub async fn get(&self, tenant: &TenantId, name: &str) -> Result<Arc<Tool>> {
        let key = (tenant.clone(), name.to_string());
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(e, _)| e.clone());
        let entry = match cached {
            Some(e) => e,
            None => {
                let e = self.storage.tool_get(tenant, name).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("no tool named `{name}` is registered"),
                    )
                })?;
                self.entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (e.clone(), std::time::Instant::now()));
                e
            }
        };
        crate::registry::check_enabled(&entry)?;
        self.get_entry(entry).await
    }

    /// Version `version` of a tenant's tool `name`, enabled or not (loaded
    /// once per version, as any other).
    pub async fn get_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Arc<Tool>> {
        self.get_entry(ToolEntry {
            tenant: tenant.clone(),
            name: name.to_string(),
            current: version.to_string(),
            disabled: false,
            updated_ms: 0,
        })
        .await
    }

    /// The tenant's enabled tools, loaded, by name. A tool that does not
    /// load is left out (and logged): it does not hide the others.
    pub async fn enabled(&self, tenant: &TenantId) -> Result<Vec<(String, Arc<Tool>)>> {
        let mut out = Vec::new();
        for entry in self.storage.tool_list(tenant).await? {
            if entry.disabled {
                continue;
            }
            let name = entry.name.clone();
            match self.get_entry(entry).await {
                Ok(tool) => out.push((name, tool)),
                Err(e) => tracing::warn!(tool = %name, "listing tools: {}", e.message),
            }
        }
        Ok(out)
    }

    /// The tool an entry points at (loaded once per version).
    pub async fn get_entry(&self, entry: ToolEntry) -> Result<Arc<Tool>> {
        let key: Key = (
            entry.tenant.clone(),
            entry.name.clone(),
            entry.current.clone(),
        );
        let mut waiting = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            loaded.clock += 1;
            let now = loaded.clock;
            match loaded.slots.get_mut(&key) {
                Some(Slot::Ready { tool, used }) => {
                    *used = now;
                    return Ok(tool.clone());
                }
                Some(Slot::Loading(rx)) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    loaded.slots.insert(key.clone(), Slot::Loading(rx.clone()));
                    let pending = Pending {
                        loaded: self.loaded.clone(),
                        key: Some(key),
                        bounds: self.bounds,
                    };
                    tokio::spawn(load(self.registry.clone(), pending, entry, tx));
                    rx
                }
            }
        };
        let done = waiting
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::internal("the tool's loading task ended without an answer"))?;
        match done.as_ref() {
            Some(result) => result.clone(),
            None => Err(Error::internal(
                "the tool's loading task ended without an answer",
            )),
        }
    }
}

/// A load in progress: its slot is removed if the load ends without a tool
/// (an error, or a panic), so that the next request tries again.
struct Pending {
    loaded: Arc<Mutex<Loaded>>,
    key: Option<Key>,
    bounds: CacheBounds,
}

impl Pending {
    /// Keep the loaded tool.
    fn done(mut self, tool: Arc<Tool>) {
        if let Some(key) = self.key.take() {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            loaded.keep(key, tool, self.bounds);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(loaded.slots.get(&key), Some(Slot::Loading(_))) {
                loaded.slots.remove(&key);
            }
        }
    }
}

/// Load one tool version on its own task; tell everyone waiting.
async fn load(
    registry: Registry,
    pending: Pending,
    entry: ToolEntry,
    tx: tokio::sync::watch::Sender<Shared>,
) {
    let started = std::time::Instant::now();
    let result = registry.load_entry(entry).await.map(|loaded| {
        crate::observe::metrics::tool_loaded(
            started.elapsed(),
            if loaded.from_artifact {
                "artifact"
            } else {
                "compiled"
            },
        );
        tracing::info!(
            tenant = %loaded.entry.tenant,
            tool = %loaded.entry.name,
            version = %loaded.version.version,
            precompiled = loaded.from_artifact,
            ms = started.elapsed().as_millis() as u64,
            "tool loaded"
        );
        Arc::new(loaded.tool)
    });
    match &result {
        Ok(tool) => pending.done(tool.clone()),
        Err(_) => {
            crate::observe::metrics::tool_loaded(started.elapsed(), "error");
            drop(pending)
        }
    }
    let _ = tx.send(Some(result));
}

/// A tool-list format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    Toolhost,
    Openai,
    Anthropic,
    Mcp,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `toolhost` (default), or the exact tool-definition array of
    /// `openai`, `anthropic` or `mcp`.
    #[serde(default)]
    format: Option<ListFormat>,
    /// Include disabled tools (`toolhost` format only).
    #[serde(default)]
    include_disabled: bool,
}

/// List the caller's tenant's tools.
#[utoipa::path(get, path = "/v1/tools", operation_id = "list_tools", tag = "tools",
    params(ListQuery),
    responses(
        (status = 200, description = "The tools (`toolhost` format: `{\"tools\": [...]}`; `openai`, `anthropic`, `mcp`: the definition array those APIs take; each function is named `<tool>__<function>`)", body = serde_json::Value),
        (status = 400, description = "Unknown format", body = super::problem::Problem),
        (status = 401, description = "No valid key", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let format = query.format.unwrap_or(ListFormat::Toolhost);
    let mut tools = Vec::new();
    for entry in app.storage.tool_list(caller.tenant()).await? {
        if entry.disabled && !(query.include_disabled && format == ListFormat::Toolhost) {
            continue;
        }
        let tool = app.tools.get_entry(entry.clone()).await?;
        tools.push((entry, tool));
    }
    if format == ListFormat::Toolhost {
        let list: Vec<Value> = tools.iter().map(|(e, t)| describe(e, t)).collect();
        return Ok(Json(json!({ "tools": list })));
    }
    let mut definitions = Vec::new();
    for (entry, tool) in &tools {
        for f in &tool.catalog().functions {
            let definition = match format {
                ListFormat::Openai => schema::openai_tool(f),
                ListFormat::Anthropic => schema::anthropic_tool(f),
                ListFormat::Mcp | ListFormat::Toolhost => schema::mcp_tool(f),
            };
            definitions.push(schema::renamed(
                definition,
                &schema::llm_name(&entry.name, f),
            ));
        }
    }
    Ok(Json(Value::Array(definitions)))
}

/// A tool as `GET /v1/tools` describes it.
fn describe(entry: &ToolEntry, tool: &Tool) -> Value {
    let catalog = tool.catalog();
    let functions: Vec<Value> = catalog
        .functions
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "llm_name": schema::llm_name(&entry.name, f),
                "signature": f.signature(),
                "description": schema::description(f),
                "parameters": schema::parameters(f),
                "result": schema::result(f),
            })
        })
        .collect();
    json!({
        "name": entry.name,
        "version": entry.current,
        "digest": tool.digest(),
        "disabled": entry.disabled,
        "description": catalog.docs.as_deref().map(str::trim),
        "functions": functions,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The tool's name: 1 to 48 letters, digits, `-` or `_`.
    name: Option<String>,
    /// The version (default: the next number).
    version: Option<String>,
    /// Point the name at the new version (default true).
    deploy: Option<bool>,
}

/// Register a component (the request body, `application/wasm`).
#[utoipa::path(post, path = "/v1/tools", operation_id = "upload_tool", tag = "tools",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component's bytes"),
    responses(
        (status = 201, description = "Registered", body = Object),
        (status = 200, description = "These bytes were already registered under this version", body = Object),
        (status = 400, description = "Missing name", body = super::problem::Problem),
        (status = 409, description = "The version exists with other bytes", body = super::problem::Problem),
        (status = 413, description = "Larger than the upload limit", body = super::problem::Problem),
        (status = 422, description = "Not a usable component, or a bad name", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn upload(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: std::result::Result<Query<UploadQuery>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let Query(query) = query.map_err(rejection)?;
    let body = body.map_err(rejection)?;
    let name = query.name.ok_or_else(|| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            "name the tool: POST /v1/tools?name=NAME",
        )
    })?;
    let progress = |_| {};
    let registration = app
        .registry
        .register(
            Upload {
                tenant: caller.tenant(),
                name: &name,
                version: query.version.as_deref(),
                bytes: body.to_vec(),
                wit: None,
                deploy: query.deploy.unwrap_or(true),
            },
            &progress,
        )
        .await?;
    app.tools.invalidate(caller.tenant(), &name);
    tracing::info!(tool = %name, version = %registration.version, created = registration.created, "registered");
    let status = if registration.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(registration)).into_response())
}

/// A tool with all its versions.
#[utoipa::path(get, path = "/v1/tools/{tool}", operation_id = "get_tool", tag = "tools",
    params(("tool" = String, Path, description = "The tool's name")),
    responses(
        (status = 200, description = "The tool, its functions and its versions", body = Object),
        (status = 404, description = "No such tool in the caller's tenant", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn get_one(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> std::result::Result<Json<Value>, ApiError> {
    let (entry, versions) = app.registry.describe(caller.tenant(), &name).await?;
    let tool = app.tools.get_entry(entry.clone()).await?;
    let mut out = describe(&entry, &tool);
    out["versions"] = json!(versions);
    Ok(Json(out))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// An existing version of the tool.
    #[schema(pattern = "^[A-Za-z0-9.+_-]{1,64}$")]
    version: String,
}

/// Point the tool's name at another version (deploy or roll back).
#[utoipa::path(post, path = "/v1/tools/{tool}/deploy", operation_id = "deploy_tool", tag = "tools",
    params(("tool" = String, Path, description = "The tool's name")),
    request_body = DeployRequest,
    responses(
        (status = 200, description = "Deployed", body = Object),
        (status = 404, description = "No such tool or version", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn deploy(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let body: DeployRequest =
        super::problem::parse_json(&body.map_err(rejection)?, "deploy request")?;
    app.registry
        .deploy(caller.tenant(), &name, &body.version)
        .await?;
    app.tools.invalidate(caller.tenant(), &name);
    tracing::info!(tool = %name, version = %body.version, "deployed");
    Ok(Json(json!({"name": name, "version": body.version})))
}

/// Disable a tool: it is not listed and cannot be invoked.
#[utoipa::path(post, path = "/v1/tools/{tool}/disable", operation_id = "disable_tool", tag = "tools",
    params(("tool" = String, Path, description = "The tool's name")),
    responses(
        (status = 200, description = "Disabled", body = Object),
        (status = 404, description = "No such tool", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn disable(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> std::result::Result<Json<Value>, ApiError> {
    set_disabled(app, caller, name, true).await
}

/// Enable a disabled tool.
#[utoipa::path(post, path = "/v1/tools/{tool}/enable", operation_id = "enable_tool", tag = "tools",
    params(("tool" = String, Path, description = "The tool's name")),
    responses(
        (status = 200, description = "Enabled", body = Object),
        (status = 404, description = "No such tool", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn enable(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> std::result::Result<Json<Value>, ApiError> {
    set_disabled(app, caller, name, false).await
}

async fn set_disabled(
    app: Arc<App>,
    caller: Caller,
    name: String,
    disabled: bool,
) -> std::result::Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    app.registry
        .set_disabled(caller.tenant(), &name, disabled)
        .await?;
    app.tools.invalidate(caller.tenant(), &name);
    tracing::info!(tool = %name, disabled, "tool state changed");
    Ok(Json(json!({"name": name, "disabled": disabled})))
}
