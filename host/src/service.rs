//! The invocation service: the one entry point every transport uses.
//!
//! `POST /v1/tools/.../invoke`, `host run`, an approver's decision and MCP's
//! `tools/call` are thin adapters that build a [`Request`] and turn the
//! [`Answer`] into their own wire format. The service owns the flow:
//!
//! ```text
//! Request ─▶ resolve the function (once) ─▶ canonical arguments (once)
//!         ─▶ Idempotency-Key: replay (audited) / 422 / 409 / run
//!         ─▶ Host::invoke_prepared (gate → sandbox → gate), on its own task
//!         ─▶ Answer
//! ```
//!
//! Invariants:
//! * The function is resolved and the arguments are made canonical exactly
//!   once; policy, the cache key, the idempotency fingerprint, the records
//!   and the guest all see that one [`crate::value::CanonicalArgs`].
//! * An invocation runs on a task of the service's tracker: it finishes and
//!   is recorded whatever happens to the caller that asked for it.
//! * Status codes and problem documents are the HTTP adapter's business;
//!   here errors are [`Error`]s with kinds.

use crate::audit::{AuditLog, canonical};
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::gate::CallContext;
use crate::idempotency;
use crate::invoke::{Call, Host, InvocationResponse, Outcome, new_invocation_id, prepare};
use crate::limits::Limits;
use crate::tool::Tool;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// One request to run a function, from any transport.
#[derive(Clone)]
pub struct Request {
    pub tool: Arc<Tool>,
    /// The function as the caller named it (`lookup-order`, `crm/divide`,
    /// `lookup_order`); `None`: the tool's only function.
    pub function: Option<String>,
    /// The arguments as sent: a JSON object keyed by parameter name.
    pub args: Value,
    /// The limits asked for (the policy may set others).
    pub limits: Limits,
    pub context: CallContext,
    /// Held until the invocation ends, even if the caller goes away first
    /// (the HTTP adapter's request slot: an invocation keeps using it).
    pub hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// What the service answers.
pub enum Answer {
    /// The call was handled now: it ran, was refused, or waits for approval
    /// (recorded in every case, unless the outcome is an `internal` error).
    Done(Box<Outcome>),
    /// The Idempotency-Key already has an answer: this one, again (nothing
    /// ran; the replay is audited).
    Replayed(Box<InvocationResponse>),
}

impl Answer {
    /// The answer as the API reports it.
    pub fn response(&self) -> InvocationResponse {
        match self {
            Answer::Done(o) => o.response(),
            Answer::Replayed(r) => (**r).clone(),
        }
    }
}

/// Idempotency keys need a store and an audit trail.
#[derive(Clone)]
pub struct Keys {
    pub audit: Arc<AuditLog>,
    /// How long answers are kept.
    pub retention: Duration,
}

/// The service.
pub struct InvocationService {
    host: Arc<Host>,
    keys: Option<Keys>,
    tracker: TaskTracker,
}

impl InvocationService {
    /// A service over `host`; `keys` enables Idempotency-Keys (a governed
    /// host with a store).
    pub fn new(host: Arc<Host>, keys: Option<Keys>) -> InvocationService {
        InvocationService {
            host,
            keys,
            tracker: TaskTracker::new(),
        }
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The tasks invocations run on (shutdown waits for them).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Handle one request, on its own task.
    pub async fn invoke(self: &Arc<Self>, request: Request) -> Result<Answer> {
        let me = self.clone();
        self.tracker
            .spawn(async move {
                let hold = request.hold.clone();
                let answer = me.flow(request).await;
                drop(hold);
                answer
            })
            .await
            .map_err(|e| Error::internal(format!("the invocation task failed: {e}")))?
    }

    /// Run a call a human approved, under the invocation id that waited.
    pub async fn run_approved(
        self: &Arc<Self>,
        invocation_id: String,
        tool: Arc<Tool>,
        call: Call,
    ) -> Result<Outcome> {
        let host = self.host.clone();
        self.tracker
            .spawn(async move {
                match prepare(&tool, &call.function, &call.args) {
                    Ok(p) => host.invoke_prepared(invocation_id, &tool, &p, &call).await,
                    Err((function, e)) => {
                        host.refuse_unprepared(invocation_id, &tool, &function, &call, e)
                            .await
                    }
                }
            })
            .await
            .map_err(|e| Error::internal(format!("the invocation task failed: {e}")))
    }

    async fn flow(&self, request: Request) -> Result<Answer> {
        let Request {
            tool,
            function,
            args,
            limits,
            context,
            hold: _,
        } = request;
        let function = match function {
            Some(f) => f,
            None => only_function(&tool)?,
        };
        let call = Call {
            function,
            args,
            limits,
            context,
        };
        let prepared = prepare(&tool, &call.function, &call.args);
        // The fingerprint of what will run: the resolved function and the
        // canonical arguments (a request that cannot be prepared: as sent).
        let (function_name, fingerprint_args) = match &prepared {
            Ok(p) => (p.function.name.clone(), &p.args.json),
            Err((f, _)) => (f.clone(), &call.args),
        };
        if let Some(key) = &call.context.idempotency_key {
            let keys = self.keys.as_ref().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidRequest,
                    "idempotency keys need a governed host with a data dir",
                )
            })?;
            let fingerprint = idempotency::fingerprint(
                tool.name(),
                &function_name,
                fingerprint_args,
                call.context.workflow.as_deref(),
                call.context.task_id.as_deref(),
            );
            let tenant = crate::audit::chain_of(call.context.tenant.as_deref());
            let begun = idempotency::begin(
                keys.audit.storage().as_ref(),
                &tenant,
                key,
                &fingerprint,
                keys.retention,
                stale_after(&call.limits),
            )
            .await?;
            if let idempotency::Begin::Replay(_, response) = begun {
                let time_ms = now_ms();
                keys.audit
                    .append(vec![(
                        tenant,
                        time_ms,
                        json!({
                            "type": "idempotent_replay",
                            "invocation_id": response.invocation_id,
                            "idempotency_key_sha256": canonical::sha256_hex(key.as_bytes()),
                            "principal": call.context.principal,
                            "time_ms": time_ms,
                        }),
                    )])
                    .await?;
                return Ok(Answer::Replayed(response));
            }
        }
        let id = new_invocation_id();
        let outcome = match &prepared {
            Ok(p) => self.host.invoke_prepared(id, &tool, p, &call).await,
            Err((function, e)) => {
                self.host
                    .refuse_unprepared(id, &tool, function, &call, e.clone())
                    .await
            }
        };
        if let (Some(key), Some(keys), Some(ErrorKind::Internal)) = (
            &call.context.idempotency_key,
            &self.keys,
            outcome.error_kind(),
        ) {
            // Not recorded, so not answered: a retry may run it.
            let tenant = crate::audit::chain_of(call.context.tenant.as_deref());
            let _ = keys.audit.storage().idempotency_abandon(&tenant, key).await;
        }
        Ok(Answer::Done(Box::new(outcome)))
    }
}

/// A running key is taken over after this long without an answer.
fn stale_after(limits: &Limits) -> Duration {
    (limits.timeout * 2).max(Duration::from_secs(120))
}

/// The name of a tool's only function, or an error listing them all.
fn only_function(tool: &Tool) -> Result<String> {
    let functions = &tool.catalog().functions;
    if functions.len() == 1 {
        return Ok(functions[0].name.clone());
    }
    let names: Vec<String> = functions
        .iter()
        .map(|f| crate::schema::llm_name(tool.name(), f))
        .collect();
    Err(Error::new(
        ErrorKind::UnknownFunction,
        format!(
            "tool `{}` has {} functions; invoke one: {}",
            tool.name(),
            functions.len(),
            names.join(", ")
        ),
    ))
}
