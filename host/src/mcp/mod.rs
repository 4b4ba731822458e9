//! MCP: every registered tool reachable by Model Context Protocol clients,
//! through the same invocation service (policy → budget → audit) as the
//! HTTP API.
//!
//! This module is transport-independent: [`McpServer`] implements rmcp's
//! `ServerHandler` (`tools/list`, `tools/call`) over a [`Tools`] source and
//! the [`InvocationService`]. Transports put it on the wire:
//! `server::mcp` (Streamable HTTP at `/mcp`, authenticated by API key) and
//! `host mcp` (stdio, one tenant).
//!
//! ```text
//! tools/list ─▶ Tools::list(tenant) ─▶ one MCP tool per function (catalog)
//! tools/call ─▶ name → tool + function ─▶ service::Request (transport "mcp")
//!            ─▶ InvocationService::invoke ─▶ Answer ─▶ CallToolResult (answer)
//! ```
//!
//! Invariants:
//! * Who calls ([`Caller`]: tenant, principal) comes from the transport,
//!   never from the request: the HTTP adapter puts it in the request's
//!   extensions after checking the API key; stdio fixes it at start.
//! * `tools/call` builds one [`crate::service::Request`] and hands it to the
//!   service: nothing of the flow (policy, budget, audit, caching,
//!   idempotency) is repeated here.
//! * Everything the service answers is a tool result, never a JSON-RPC
//!   error: a refusal, a sandbox failure, a tool's WIT `err` and a call
//!   waiting for approval are `isError: true` results naming the error kind
//!   and what to do. Only a request that names no tool of the caller's
//!   tenant, or is malformed, is a JSON-RPC error (`-32602`).

pub mod answer;
pub mod catalog;
pub mod changes;
pub mod tasks;

use crate::BoxFuture;
use crate::error::Result;
use crate::gate::{CallContext, Governed};
use crate::limits::Limits;
use crate::service::{Answer, InvocationService, Request};
use crate::tool::Tool;
use rmcp::ErrorData as McpError;
use rmcp::model::SubscriptionFilter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, GetTaskParams,
    GetTaskResult, Implementation, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    RequestMetaObject, ServerCapabilities, ServerConfig, UpdateTaskParams,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// The protocol revisions served: 2026-07-28 (stateless) and the
/// initialize-based 2025-11-25 and 2025-06-18.
pub const VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];

/// `_meta` keys a client may send with `tools/call` (Toolhost's own, in its
/// reverse-DNS namespace): the orchestrator's task (per-task budgets), the
/// workflow whose policy governs the call, and an idempotency key.
pub const META_TASK_ID: &str = "io.toolhost/task_id";
pub const META_WORKFLOW: &str = "io.toolhost/workflow";
pub const META_IDEMPOTENCY_KEY: &str = "io.toolhost/idempotency_key";

/// Who is calling, as the transport established it.
#[derive(Clone)]
pub struct Caller {
    pub tenant: crate::ids::TenantId,
    /// The caller's identity in records (an API key id; `stdio`).
    pub principal: String,
    /// Held until the invocation ends (the HTTP adapter's request slot).
    pub hold: Option<Hold>,
    /// Asked again while a long-lived stream is open (the HTTP adapter:
    /// the API key is still valid, not revoked); `None`: always.
    pub recheck: Option<Arc<dyn Recheck>>,
}

/// Whether a caller may still be served: a long-lived stream
/// (`subscriptions/listen`) asks every [`RECHECK_EVERY`] and ends when the
/// answer is no, so a revoked key stops hearing anything as soon as
/// requests with it are refused.
pub trait Recheck: Send + Sync {
    fn still_allowed(&self) -> BoxFuture<'_, bool>;
}

/// How often a listen stream re-checks its caller.
pub const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

type Held = Arc<dyn std::any::Any + Send + Sync>;

/// What a request holds while its work runs (the HTTP adapter's request
/// slot). An invocation the request starts keeps it until the invocation
/// ends; a request that only waits (`subscriptions/listen`, open for as
/// long as the client likes) lets go of it at once, so streams never take
/// the slots invocations run in.
#[derive(Clone)]
pub struct Hold(Arc<std::sync::Mutex<Option<Held>>>);

impl Hold {
    pub fn new(held: Held) -> Hold {
        Hold(Arc::new(std::sync::Mutex::new(Some(held))))
    }

    /// What is held, for work that keeps it (None once released).
    fn keep(&self) -> Option<Held> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Let go of it (every copy of this hold).
    fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("tenant", &self.tenant)
            .field("principal", &self.principal)
            .finish()
    }
}

/// A tenant's enabled tools: (registered name, loaded tool).
pub type Listing = Vec<(String, Arc<Tool>)>;

/// Where the tenant's tools come from (the server's loaded-tool cache).
pub trait Tools: Send + Sync + 'static {
    /// The tenant's enabled tools.
    fn list<'a>(&'a self, tenant: &'a crate::ids::TenantId) -> BoxFuture<'a, Result<Listing>>;
    /// The enabled tool `name` points at now (`not_found`,
    /// `tool_disabled` otherwise).
    fn get<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<Tool>>>;
    /// Version `version` of tool `name`, enabled or not (to show the
    /// result of a call that ran with it).
    fn version<'a>(
        &'a self,
        tenant: &'a crate::ids::TenantId,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Arc<Tool>>>;
}

/// What every MCP request shares.
pub struct Shared {
    pub tools: Arc<dyn Tools>,
    pub service: Arc<InvocationService>,
    /// The gate: its policy in force says which functions need approval
    /// (tool annotations).
    pub governed: Arc<Governed>,
    /// Default invocation limits (a policy may set others per tool).
    pub limits: Limits,
    /// Tool-list changes, for `subscriptions/listen`.
    pub changes: Arc<changes::Changes>,
}

/// The MCP handler: one per request (HTTP) or per connection (stdio).
#[derive(Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
    /// The caller of every request (stdio); `None`: each request's own,
    /// from its HTTP extensions.
    fixed: Option<Caller>,
}

impl McpServer {
    /// A handler whose callers come from each request's HTTP extensions.
    pub fn per_request(shared: Arc<Shared>) -> McpServer {
        McpServer {
            shared,
            fixed: None,
        }
    }

    /// A handler for one caller (stdio).
    pub fn for_caller(shared: Arc<Shared>, caller: Caller) -> McpServer {
        McpServer {
            shared,
            fixed: Some(caller),
        }
    }

    /// A plain 2026-07-28 `tools/call` ([`is_plain`]) run without a
    /// request context: what `tools/call` answers, for a transport that
    /// serves this common case without rmcp's per-request service. `None`:
    /// the call is not plain, or is a protocol error (an unknown tool, a
    /// bad `_meta` value): hand the request to rmcp, which answers it
    /// exactly as for any client.
    pub async fn call_plain(
        &self,
        caller: &Caller,
        params: &CallToolRequestParams,
    ) -> Option<CallToolResponse> {
        let meta = params.meta.as_ref().filter(|_| is_plain(params))?;
        let tasks = meta
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        match self.prepare(caller, params, meta).await {
            Ok(Prepared::Call(call)) => Some(self.run(call, None, tasks).await),
            Ok(Prepared::Failed(result)) => Some(result.into()),
            Err(_) => None,
        }
    }

    /// A `tools/call` checked (`_meta`) and resolved to its tool: all that
    /// happens before anything runs, with no effect anywhere.
    async fn prepare(
        &self,
        caller: &Caller,
        params: &CallToolRequestParams,
        meta: &RequestMetaObject,
    ) -> std::result::Result<Prepared, McpError> {
        let task_id = meta_string(meta, META_TASK_ID, label)?;
        let workflow = meta_string(meta, META_WORKFLOW, label)?;
        let idempotency_key = meta_string(meta, META_IDEMPOTENCY_KEY, |k| {
            crate::idempotency::validate_key(k).map_err(|e| e.message)
        })?;
        let traceparent = meta
            .get_traceparent()
            .filter(|t| valid_traceparent(t))
            .map(str::to_string);
        let Some((name, function)) = params.name.split_once("__") else {
            return Err(unknown_tool(&params.name));
        };
        let tool = match self.shared.tools.get(&caller.tenant, name).await {
            Ok(t) => t,
            Err(e)
                if matches!(
                    e.kind,
                    crate::ErrorKind::NotFound | crate::ErrorKind::ToolDisabled
                ) =>
            {
                return Err(unknown_tool(&params.name));
            }
            Err(e) => return Ok(Prepared::Failed(answer::failed(&e))),
        };
        let request = Request {
            tool: tool.clone(),
            function: Some(function.to_string()),
            args: arguments(params),
            limits: self.shared.limits.clone(),
            context: CallContext {
                tenant: caller.tenant.clone(),
                workflow,
                task_id,
                principal: Some(caller.principal.clone()),
                idempotency_key,
                approval: None,
                callback_url: None,
                transport: Some("mcp".into()),
                traceparent,
            },
            hold: caller.hold.as_ref().and_then(Hold::keep),
        };
        Ok(Prepared::Call(Box::new(Call { tool, request })))
    }

    /// Run a prepared call through the service; with a request context,
    /// the invocation's log lines and progress reports go first, as that
    /// request's `_meta` asks. A call that waits for approval is a task
    /// ([`tasks`]) when the request declared the tasks extension (`tasks`).
    async fn run(
        &self,
        call: Box<Call>,
        notify: Option<&RequestContext<RoleServer>>,
        tasks: bool,
    ) -> CallToolResponse {
        let Call { tool, request } = *call;
        let (tenant, principal) = (
            request.context.tenant.clone(),
            request.context.principal.clone(),
        );
        match self.shared.service.invoke(request).await {
            Ok(answer) => {
                if let (Answer::Done(outcome), Some(context)) = (&answer, notify) {
                    send_logs(context, &tool, &outcome.logs).await;
                    send_progress(context, &outcome.progress).await;
                }
                let response = answer.response();
                if tasks
                    && response.status == crate::record::Status::PendingApproval
                    && let Some(approval) = self
                        .task_approval(&response, &tenant, principal.as_deref())
                        .await
                {
                    return tasks::created(&response, &approval).into();
                }
                answer::result(&tool, &response).into()
            }
            Err(e) => answer::failed(&e).into(),
        }
    }

    /// The approval request a parked call's answer is a task of, if it may
    /// be a task for this caller: a task is returned only if `tasks/get`
    /// resolves it for the same key (SEP-2663), so only if this key asked
    /// for the approval (a replay of a keyed call made by a colleague's key
    /// is not: idempotency keys are per tenant). `None` also when the
    /// request cannot be read: the plain answer names it.
    async fn task_approval(
        &self,
        response: &crate::record::InvocationResponse,
        tenant: &crate::ids::TenantId,
        principal: Option<&str>,
    ) -> Option<crate::storage::ApprovalRecord> {
        let principal = principal?;
        let approval_id = response.invocation_id.approval();
        let storage = self.shared.governed.audit().storage();
        storage
            .approval_get(tenant, &approval_id)
            .await
            .ok()
            .flatten()
            .filter(|a| {
                a.requester.as_deref() == Some(principal)
                    && a.invocation_id == response.invocation_id
            })
    }

    fn caller(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> std::result::Result<Caller, McpError> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| {
                McpError::internal_error("the request has no authenticated caller", None)
            })
    }
}

/// A `tools/call` ready to run.
struct Call {
    tool: Arc<Tool>,
    request: Request,
}

enum Prepared {
    Call(Box<Call>),
    /// Answered before running (the registry failed): an `isError` result.
    Failed(CallToolResult),
}

/// Whether a `tools/call` is the plain 2026-07-28 case that
/// [`McpServer::call_plain`] serves: self-contained `_meta` for 2026-07-28
/// (protocol version, client info and capabilities), nothing that makes
/// the answer more than one result (no `progressToken`, no log level), and
/// no input-required round (`inputResponses`, `requestState`).
pub fn is_plain(params: &CallToolRequestParams) -> bool {
    let Some(meta) = &params.meta else {
        return false;
    };
    params.input_responses.is_none()
        && params.request_state.is_none()
        && meta.protocol_version() == Some(ProtocolVersion::V_2026_07_28)
        && meta
            .missing_required_keys(&ProtocolVersion::V_2026_07_28)
            .is_empty()
        && meta.get_progress_token().is_none()
        && meta.log_level().is_none()
}

/// The arguments of a `tools/call`: an object, or none (`{}`).
fn arguments(params: &CallToolRequestParams) -> Value {
    Value::Object(params.arguments.clone().unwrap_or_default())
}

/// A valid W3C `traceparent`: the one check every transport uses (what
/// fails it is ignored, as W3C Trace Context requires).
pub use crate::observe::trace::valid_traceparent;

/// A Toolhost `_meta` string (task id, workflow, idempotency key): absent,
/// or a string that passes `check`.
fn meta_string(
    meta: &rmcp::model::RequestMetaObject,
    key: &str,
    check: impl Fn(&str) -> std::result::Result<(), String>,
) -> std::result::Result<Option<String>, McpError> {
    match meta.0.0.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => check(s)
            .map(|()| Some(s.clone()))
            .map_err(|e| McpError::invalid_params(format!("_meta `{key}`: {e}"), None)),
        Some(_) => Err(McpError::invalid_params(
            format!("_meta `{key}` must be a string"),
            None,
        )),
    }
}

fn label(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
        Err("must be 1 to 200 characters without control characters".into())
    } else {
        Ok(())
    }
}

impl rmcp::ServerHandler for McpServer {
    // Logging is deprecated by SEP-2577 (kept for 2025-11-25 clients).
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_logging()
                .enable_tasks()
                .build(),
        )
        .with_server_info(
            Implementation::new("toolhost", env!("CARGO_PKG_VERSION")).with_title("Toolhost"),
        )
        .with_instructions(
            "Toolhost runs sandboxed WebAssembly tools under a policy, a budget and an audit \
                 trail. A refused or failed call is a tool result with isError: true whose text \
                 starts with the error kind and says what to do. A call that needs a human's \
                 approval does not run until one approves it: a client that declares the tasks \
                 extension gets a task that completes with the outcome; any other gets a result \
                 naming the approval and how to get the outcome once it is decided.",
        )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(VERSIONS)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, McpError> {
        let caller = self.caller(&context)?;
        let tools = self
            .shared
            .tools
            .list(&caller.tenant)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let policy = self.shared.governed.policy();
        let all = catalog::definitions(&tools, &policy, &caller.tenant);
        let cursor = request.and_then(|r| r.cursor);
        catalog::page(all, cursor.as_deref(), catalog::PAGE_SIZE)
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, McpError> {
        let caller = self.caller(&context)?;
        let call = match self.prepare(&caller, &params, &context.meta).await? {
            Prepared::Call(call) => call,
            Prepared::Failed(result) => return Ok(result.into()),
        };
        // Per request (2026-07-28 `_meta`) or, for an initialize-based
        // session, as declared at initialize.
        let tasks = context
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        Ok(self.run(call, Some(&context), tasks).await)
    }

    /// `tasks/get` (rmcp refuses it with -32021 unless the request
    /// declared the tasks extension).
    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<GetTaskResult, McpError> {
        let caller = self.caller(&context)?;
        tasks::get(&self.shared, &caller, &request.task_id).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<(), McpError> {
        let caller = self.caller(&context)?;
        tasks::cancel(&self.shared, &caller, &request.task_id).await
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<(), McpError> {
        let caller = self.caller(&context)?;
        tasks::update(&self.shared, &caller, &request.task_id).await
    }

    /// A request rmcp could not parse as any method it knows. For a
    /// `tasks/*` method that is a malformed request (no `taskId`, or not a
    /// string; `tasks/update` without `inputResponses`): SEP-2663's
    /// invalid params (`-32602`), after the same capability check as a
    /// well-formed one, not "method not found" for a method the server
    /// advertises.
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<rmcp::model::CustomResult, McpError> {
        let method = request.method.as_str();
        if !matches!(method, "tasks/get" | "tasks/cancel" | "tasks/update") {
            return Err(McpError::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                request.method,
                None,
            ));
        }
        let declared = context
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        if !declared {
            return Err(McpError::missing_required_client_capability(
                rmcp::model::ClientCapabilities::builder()
                    .enable_tasks()
                    .build(),
            ));
        }
        let needs = if method == "tasks/update" {
            "`taskId` (a string) and `inputResponses` (an object)"
        } else {
            "`taskId` (a string)"
        };
        Err(McpError::invalid_params(
            format!("{method}: malformed params: it needs {needs}"),
            None,
        ))
    }

    /// `subscriptions/listen` (2026-07-28): tool-list changes only.
    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // rmcp narrows this to what the client asked for.
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    /// One listen stream: `notifications/tools/list_changed` whenever the
    /// caller's tenant's tool list changes (any replica, the CLI, the
    /// console), until the client closes it, the server shuts down (then
    /// the final result) or the caller is no longer allowed (its key
    /// revoked: an error). The stream holds no request slot, and counts
    /// against the streams a tenant may have whatever it asked for.
    async fn listen(&self, context: SubscriptionContext) -> std::result::Result<(), McpError> {
        let caller = self.caller(context.request_context())?;
        if let Some(hold) = &caller.hold {
            hold.release();
        }
        let changes = &self.shared.changes;
        let mut listener = changes.listen(&caller.tenant).map_err(|e| {
            McpError::internal_error(
                answer::error_text(&e),
                Some(serde_json::json!({"kind": e.kind.as_str(), "retryAfterMs": 1000})),
            )
        })?;
        let tell = context.accepted().tools_list_changed == Some(true);
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let revoked = || {
            McpError::invalid_request(
                "unauthenticated: the API key of this subscription is no longer valid (revoked or \
                 its role removed); subscribe again with a valid key",
                Some(serde_json::json!({"kind": "unauthenticated"})),
            )
        };
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                () = changes.stopped() => return Ok(()),
                _ = recheck.tick() => {
                    if let Some(r) = &caller.recheck && !r.still_allowed().await {
                        return Err(revoked());
                    }
                }
                more = listener.changed() => {
                    if !more {
                        return Ok(());
                    }
                    if !tell {
                        continue;
                    }
                    // A client that stops reading must not keep this
                    // stream (and shutdown) waiting on the send.
                    tokio::select! {
                        sent = context.sink().notify_tool_list_changed() => {
                            if sent.is_err() {
                                return Ok(());
                            }
                        }
                        () = context.cancelled() => return Ok(()),
                        () = changes.stopped() => return Ok(()),
                    }
                }
            }
        }
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        _request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<(), McpError> {
        // Accepted, not remembered: no request depends on another (no
        // sessions). Tools' log lines at `info` and above go with each call.
        Ok(())
    }
}

/// The tool's progress reports (`toolhost:tool/progress`) as
/// `notifications/progress` for the request's `progressToken`, before the
/// result; none without a token.
async fn send_progress(
    context: &RequestContext<RoleServer>,
    reports: &[crate::capability::log::Progress],
) {
    let Some(token) = context.meta.get_progress_token() else {
        return;
    };
    for r in reports {
        let mut p = rmcp::model::ProgressNotificationParam::new(token.clone(), r.done);
        p.total = r.total;
        p.message = r.message.clone();
        if context.peer.notify_progress(p).await.is_err() {
            return;
        }
    }
}

#[allow(deprecated)]
fn rank(level: rmcp::model::LoggingLevel) -> u8 {
    use rmcp::model::LoggingLevel::*;
    match level {
        Debug => 0,
        Info => 1,
        Notice => 2,
        Warning => 3,
        Error => 4,
        Critical => 5,
        Alert => 6,
        Emergency => 7,
    }
}

/// The tool's log lines (`toolhost:tool/log`) as `notifications/message`,
/// sent before the call's result: for 2026-07-28 requests when their
/// `_meta` asks for a log level, at that level and above; for earlier
/// revisions at `info` and above. Lines are the invocation's bounded,
/// secret-scrubbed log.
#[allow(deprecated)]
async fn send_logs(
    context: &RequestContext<RoleServer>,
    tool: &Tool,
    logs: &[crate::capability::log::LogLine],
) {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    let threshold = match context.meta.log_level() {
        Some(level) => level,
        None if context.meta.protocol_version().is_some() => return,
        None => LoggingLevel::Info,
    };
    for line in logs {
        let level = match line.level.as_str() {
            "trace" | "debug" => LoggingLevel::Debug,
            "info" => LoggingLevel::Info,
            "warn" => LoggingLevel::Warning,
            _ => LoggingLevel::Error,
        };
        if rank(level) < rank(threshold) {
            continue;
        }
        let mut message =
            LoggingMessageNotificationParam::new(level, Value::String(line.message.clone()));
        message.logger = Some(tool.name().to_string());
        if context.peer.notify_logging_message(message).await.is_err() {
            return;
        }
    }
}

fn unknown_tool(name: &str) -> McpError {
    McpError::invalid_params(
        format!("Unknown tool: `{name}` (tools/list names the tools this caller may use)"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_checked_as_w3c_says() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        // A later version: its first four fields.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }
}
