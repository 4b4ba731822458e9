//! `/v1/tools`: list (with schemas, in LLM APIs' formats), upload,
//! describe, deploy, disable and enable; and the cache of loaded tools.

use super::App;
use super::auth::Caller;
use super::problem::{ApiError, rejection};
use crate::error::{Error, ErrorKind, Result};
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

/// Loaded tools, by tenant and name, at the version their name pointed at
/// when loaded. Each use checks the name's current version in storage, so a
/// deploy, rollback or disable (by this server or by `host` commands on the
/// same data dir) takes effect on the next call. Tools load lazily: a server
/// with many tools starts at once.
pub struct ToolCache {
    registry: Registry,
    storage: Arc<dyn Storage>,
    slots: Mutex<HashMap<(String, String), Slot>>,
    /// Names' entries (current version, disabled), remembered for `ttl`.
    entries: Mutex<HashMap<(String, String), (ToolEntry, std::time::Instant)>>,
    ttl: std::time::Duration,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Tool>>>>;

impl ToolCache {
    /// A cache that re-reads a name's entry after `ttl`: a deploy, rollback
    /// or disable by another process on the data dir takes effect within it
    /// (through this server's API: at once).
    pub fn new(
        registry: Registry,
        storage: Arc<dyn Storage>,
        ttl: std::time::Duration,
    ) -> ToolCache {
        ToolCache {
            registry,
            storage,
            slots: Mutex::new(HashMap::new()),
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Forget a name's entry (it was just changed).
    pub fn invalidate(&self, tenant: &str, name: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(tenant.to_string(), name.to_string()));
    }

    /// The tool a tenant's name points at now.
    pub async fn get(&self, tenant: &str, name: &str) -> Result<Arc<Tool>> {
        let key = (tenant.to_string(), name.to_string());
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

    /// The tool an entry points at (loaded once per version).
    pub async fn get_entry(&self, entry: ToolEntry) -> Result<Arc<Tool>> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((entry.tenant.clone(), entry.name.clone()))
            .or_default()
            .clone();
        // One load per tool at a time; hits hold the lock only to look.
        let mut slot = slot.lock().await;
        if let Some(tool) = slot.as_ref()
            && tool.version() == Some(entry.current.as_str())
        {
            return Ok(tool.clone());
        }
        let started = std::time::Instant::now();
        let loaded = self.registry.load_entry(entry).await?;
        tracing::info!(
            tenant = %loaded.entry.tenant,
            tool = %loaded.entry.name,
            version = %loaded.version.version,
            precompiled = loaded.from_artifact,
            ms = started.elapsed().as_millis() as u64,
            "tool loaded"
        );
        let tool = Arc::new(loaded.tool);
        *slot = Some(tool.clone());
        Ok(tool)
    }
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
