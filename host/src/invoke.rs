//! The invocation path: request → gate → sandbox → gate → response.
//!
//! [`Host::invoke`] is the only way a tool function runs. It resolves the
//! function, converts the JSON arguments, asks the gate for admission, runs
//! the sandbox with the admitted grants and a per-invocation mediator, turns
//! the results into JSON under the output cap, and has the gate settle and
//! record the outcome before returning it.

use crate::capability::log::{LogLine, Progress};
use crate::capability::{CapabilityEvent, Mediator};
use crate::error::{Error, ErrorKind};
use crate::gate::{CallContext, Gate, InvocationReport, InvocationRequest};
use crate::ids::{ApprovalId, InvocationId};
use crate::limits::Limits;
use crate::observe::{self, trace::attr};
pub use crate::record::{InvocationResponse, Status, Usage};
use crate::runtime::Runtime;
use crate::sandbox::{self, Run, stdio::Captured};
use crate::secrets::Scrubber;
use crate::tool::{FunctionInfo, Tool};
use crate::value::{self, CanonicalArgs};
use serde::Serialize;
use std::sync::Arc;
use wasmtime::component::ComponentExportIndex;

/// One call of one function.
#[derive(Debug, Clone)]
pub struct Call {
    /// The function: `lookup-order`, `crm/divide`, or a bare unambiguous name.
    pub function: String,
    /// A JSON object keyed by parameter name.
    pub args: serde_json::Value,
    pub limits: Limits,
    pub context: CallContext,
}

/// Everything an invocation produced. Serializes to the `host run --json`
/// shape.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Unique id of this invocation (in the audit trail too).
    pub invocation_id: InvocationId,
    pub ok: bool,
    pub status: Status,
    pub tool: String,
    pub function: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<ApprovalId>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The function's result as JSON (`null` for a function without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    pub usage: Usage,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub logs: Vec<LogLine>,
    #[serde(skip_serializing_if = "is_zero")]
    pub logs_dropped: u64,
    /// Progress the tool reported (`toolhost:tool/progress`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<Progress>,
    /// Outbound calls the guest attempted, with the gate's decisions.
    pub outbound: Vec<CapabilityEvent>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Outcome {
    /// An outcome where nothing ran (yet): no output, no usage.
    fn without_run(
        tool: &Tool,
        function: &str,
        invocation_id: InvocationId,
        status: Status,
    ) -> Outcome {
        Outcome {
            invocation_id,
            approval_id: None,
            cached: false,
            ok: status == Status::Ok,
            status,
            tool: tool.name().to_string(),
            function: function.to_string(),
            version: tool.version().map(str::to_string),
            result: None,
            error: None,
            usage: Usage::default(),
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            logs: Vec::new(),
            logs_dropped: 0,
            progress: Vec::new(),
            outbound: Vec::new(),
        }
    }

    fn refused(tool: &Tool, function: &str, invocation_id: InvocationId, error: Error) -> Outcome {
        // An approval refusal parks a registered tool's call (an approver
        // can run that version later): its approval id is derived from the
        // invocation's. A file run with `host run` is simply refused.
        let pending = error.kind == ErrorKind::ApprovalRequired && tool.version().is_some();
        let status = if pending {
            Status::PendingApproval
        } else {
            Status::Refused
        };
        let mut outcome = Outcome::without_run(tool, function, invocation_id, status);
        if pending {
            outcome.approval_id = Some(outcome.invocation_id.approval());
        }
        outcome.error = Some(error);
        outcome
    }

    /// The API's view of this outcome.
    pub fn response(&self) -> InvocationResponse {
        InvocationResponse {
            invocation_id: self.invocation_id.clone(),
            status: self.status,
            tool: self.tool.clone(),
            function: self.function.clone(),
            version: self.version.clone(),
            result: self.result.clone(),
            error: self.error.clone(),
            usage: self.usage.clone(),
            approval_id: self.approval_id.clone(),
            cached: self.cached,
        }
    }

    /// Replace the outcome with a host failure (nothing may be returned as
    /// if it had been recorded).
    fn refuse(&mut self, e: Error) {
        self.ok = false;
        self.status = Status::Refused;
        self.approval_id = None;
        self.result = None;
        self.error = Some(e);
    }

    fn fail(&mut self, e: Error) {
        self.ok = false;
        self.status = Status::Error;
        self.result = None;
        self.error = Some(e);
    }

    /// Remove injected secret values from everything this outcome holds.
    fn scrub(&mut self, scrubber: &Scrubber) {
        if scrubber.is_empty() {
            return;
        }
        if let Some(r) = &mut self.result {
            scrubber.json(r);
        }
        if let Some(e) = &mut self.error {
            scrubber.string(&mut e.message);
        }
        // A capture cut at its cap may end with part of a value.
        let text = |s: &mut String, cut: bool| {
            if cut {
                scrubber.string_cut(s)
            } else {
                scrubber.string(s)
            }
        };
        text(&mut self.stdout, self.stdout_truncated);
        text(&mut self.stderr, self.stderr_truncated);
        for line in &mut self.logs {
            text(&mut line.message, line.truncated);
        }
        for report in &mut self.progress {
            if let Some(m) = &mut report.message {
                scrubber.string(m);
            }
        }
        for event in &mut self.outbound {
            if let crate::gate::OutboundCall::Http { path, host, .. } = &mut event.call {
                scrubber.string(path);
                scrubber.string(host);
            }
            scrubber.string(&mut event.rule);
            if let Some(e) = &mut event.result.error {
                scrubber.string(e);
            }
        }
    }

    /// The error kind, if the invocation failed.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        self.error.as_ref().map(|e| e.kind)
    }
}

/// The runtime and the gate: where invocations happen.
pub struct Host {
    runtime: Arc<Runtime>,
    gate: Arc<dyn Gate>,
}

impl Host {
    pub fn new(runtime: Arc<Runtime>, gate: Arc<dyn Gate>) -> Host {
        Host { runtime, gate }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Run one invocation of `tool` through the gate and the sandbox.
    pub async fn invoke(&self, tool: &Tool, call: &Call) -> Outcome {
        self.invoke_with_id(InvocationId::generate(), tool, call)
            .await
    }

    /// [`Host::invoke`] under a given invocation id.
    pub async fn invoke_with_id(
        &self,
        invocation_id: InvocationId,
        tool: &Tool,
        call: &Call,
    ) -> Outcome {
        match prepare(tool, &call.function, &call.args) {
            Ok(prepared) => {
                self.invoke_prepared(invocation_id, tool, &prepared, call)
                    .await
            }
            Err((function, e)) => self.refuse(tool, &function, call, invocation_id, e).await,
        }
    }

    /// Record a call refused before it could be prepared (an unknown
    /// function, invalid arguments): the gate records it too.
    pub async fn refuse_unprepared(
        &self,
        invocation_id: InvocationId,
        tool: &Tool,
        function: &str,
        call: &Call,
        refusal: Error,
    ) -> Outcome {
        self.refuse(tool, function, call, invocation_id, refusal)
            .await
    }

    /// Run a prepared call: the gate, the sandbox, the gate. Its arguments
    /// are `prepared.args` (canonical); `call.args` is not read.
    pub async fn invoke_prepared(
        &self,
        invocation_id: InvocationId,
        tool: &Tool,
        prepared: &Prepared<'_>,
        call: &Call,
    ) -> Outcome {
        let function = prepared.function;
        let export = prepared.export;
        let params = &prepared.args.vals;
        let args = &prepared.args.json;
        let request = InvocationRequest {
            invocation_id: &invocation_id,
            tool: tool.name(),
            version: tool.version(),
            digest: tool.digest(),
            function,
            args,
            context: &call.context,
            limits: &call.limits,
        };
        let admit = observe::trace::child("admit");
        let admitted = admit.run(self.gate.admit(&request)).await;
        match &admitted {
            _ if !admit.is_on() => {}
            Ok(a) => admit.set_all([
                attr("toolhost.policy.effect", "allow"),
                attr("toolhost.policy.rule", a.rule.clone()),
                attr("toolhost.cache.hit", a.cached.is_some()),
            ]),
            Err(e) => admit.set_all([
                attr("toolhost.policy.effect", e.kind.as_str()),
                attr("toolhost.policy.rule", e.message.clone()),
            ]),
        }
        admit.end();
        let admission = match admitted {
            Ok(a) => a,
            Err(refusal) => {
                return self
                    .refuse_with(tool, &function.name, call, args, invocation_id, refusal)
                    .await;
            }
        };
        if let Some(result) = admission.cached.clone() {
            return self
                .cached(
                    tool,
                    &function.name,
                    call,
                    args,
                    invocation_id,
                    admission,
                    result,
                )
                .await;
        }
        let limits = admission
            .limits
            .clone()
            .unwrap_or_else(|| call.limits.clone());
        let admitted = Arc::new(Admitted {
            gate: self.gate.clone(),
            admission,
        });
        let mediator = Mediator::new(admitted.clone());
        let sandbox_span = observe::trace::child("sandbox");
        let sfut = sandbox::run(
            self.runtime.engine(),
            Run {
                pre: tool.instance_pre(),
                export,
                params,
                result_count: usize::from(function.result.is_some()),
                limits: &limits,
                grants: &admitted.admission.grants,
                mediator: mediator.clone(),
            },
        );
        let out = sandbox_span.run(sfut).await;
        if sandbox_span.is_on() {
            sandbox_span.set_all([
                attr(
                    "toolhost.fuel",
                    i64::try_from(out.fuel_used).unwrap_or(i64::MAX),
                ),
                attr("toolhost.wall_ms", out.wall.as_millis() as i64),
                attr(
                    "toolhost.memory_peak_bytes",
                    i64::try_from(out.memory_peak_bytes).unwrap_or(i64::MAX),
                ),
            ]);
        }
        sandbox_span.end();

        // Bytes and strings the guest returns are scrubbed as values, before
        // they become JSON (a `list<u8>` turns into base64 there, where the
        // injected values could no longer be found).
        let scrubber = Scrubber::new(&admitted.admission.injected);
        let result = out.result.map(|mut vals| {
            for v in &mut vals {
                value::scrub_val(v, &scrubber);
            }
            vals
        });
        let result = result.and_then(|vals| match (&function.result, vals.first()) {
            (Some(ty), Some(val)) => {
                let mut budget = limits.max_output_bytes;
                value::val_to_json(ty, val, &mut budget).map_err(|value::OverBudget| {
                    Error::new(
                        ErrorKind::OutputTooLarge,
                        format!(
                            "the result is larger than the {}-byte output cap",
                            limits.max_output_bytes
                        ),
                    )
                })
            }
            _ => Ok(serde_json::Value::Null),
        });
        let usage = Usage {
            fuel: out.fuel_used,
            wall_ms: out.wall.as_millis() as u64,
            memory_peak_bytes: out.memory_peak_bytes,
        };
        let outbound = mediator.events();
        let (result, error) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        let Captured {
            text: stdout,
            truncated: stdout_truncated,
            ..
        } = out.stdout;
        let Captured {
            text: stderr,
            truncated: stderr_truncated,
            ..
        } = out.stderr;
        let mut outcome = Outcome {
            invocation_id,
            ok: error.is_none(),
            status: if error.is_none() {
                Status::Ok
            } else {
                Status::Error
            },
            tool: tool.name().to_string(),
            function: function.name.clone(),
            version: tool.version().map(str::to_string),
            approval_id: None,
            cached: false,
            result,
            error,
            usage,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            logs: out.logs,
            logs_dropped: out.logs_dropped,
            progress: out.progress,
            outbound,
        };
        // Nothing the invocation produced leaves the host (to the caller,
        // the records, the audit trail, the cache or an idempotent answer)
        // with a secret the host injected into it.
        outcome.scrub(&scrubber);
        let response = outcome.response();
        let report = InvocationReport {
            context: &call.context,
            args,
            response: &response,
            outbound: &outcome.outbound,
        };
        if let Err(e) = self.complete(Some(&admitted.admission), &report).await {
            // The outcome could not be recorded: it must not be returned as
            // if it had been.
            outcome.fail(e);
        }
        outcome
    }
}

impl Host {
    /// `Gate::complete`, in its span.
    async fn complete(
        &self,
        admission: Option<&crate::gate::Admission>,
        report: &InvocationReport<'_>,
    ) -> crate::error::Result<()> {
        let span = observe::trace::child("complete");
        let done = span.run(self.gate.complete(admission, report)).await;
        if let Err(e) = &done {
            span.set("toolhost.error_kind", e.kind.as_str());
            span.error(e.kind.as_str());
        }
        span.end();
        done
    }

    /// An admitted invocation the gate had a result on file for: nothing
    /// runs; the gate records the hit.
    #[allow(clippy::too_many_arguments)]
    async fn cached(
        &self,
        tool: &Tool,
        function: &str,
        call: &Call,
        args: &serde_json::Value,
        invocation_id: InvocationId,
        admission: crate::gate::Admission,
        result: serde_json::Value,
    ) -> Outcome {
        let mut outcome = Outcome::without_run(tool, function, invocation_id, Status::Ok);
        outcome.result = Some(result);
        outcome.cached = true;
        let response = outcome.response();
        let report = InvocationReport {
            context: &call.context,
            args,
            response: &response,
            outbound: &[],
        };
        if let Err(e) = self.complete(Some(&admission), &report).await {
            outcome.fail(e);
        }
        outcome
    }

    /// An invocation that never ran, with the request's own arguments.
    async fn refuse(
        &self,
        tool: &Tool,
        function: &str,
        call: &Call,
        invocation_id: InvocationId,
        refusal: Error,
    ) -> Outcome {
        self.refuse_with(tool, function, call, &call.args, invocation_id, refusal)
            .await
    }

    /// An invocation that never ran: the gate records it too (without an
    /// admission), and if even that fails, that is the error returned.
    async fn refuse_with(
        &self,
        tool: &Tool,
        function: &str,
        call: &Call,
        args: &serde_json::Value,
        invocation_id: InvocationId,
        refusal: Error,
    ) -> Outcome {
        let mut outcome = Outcome::refused(tool, function, invocation_id, refusal);
        let response = outcome.response();
        let report = InvocationReport {
            context: &call.context,
            args,
            response: &response,
            outbound: &[],
        };
        if let Err(e) = self.complete(None, &report).await {
            // Nothing ran; a refusal that could not be recorded (nor its
            // approval stored) stays a refusal, with the storage's error:
            // a retry can help when that is `unavailable`.
            outcome.refuse(e);
        }
        outcome
    }
}

/// An admitted invocation's gate: decides its outbound calls.
struct Admitted {
    gate: Arc<dyn Gate>,
    admission: crate::gate::Admission,
}

impl crate::capability::Decide for Admitted {
    fn decide(&self, call: &crate::capability::OutboundCall) -> crate::capability::Verdict {
        self.gate.outbound(&self.admission, call)
    }
}

/// A call resolved once: its function, and its arguments in canonical form.
pub struct Prepared<'t> {
    pub function: &'t FunctionInfo,
    export: &'t ComponentExportIndex,
    pub args: CanonicalArgs,
}

/// Resolve `function` of `tool` and check `args` against its parameters.
/// A failure names the function as far as it was resolved (for the
/// refusal's record) and the error (`unknown_function`, `invalid_args`).
pub fn prepare<'t>(
    tool: &'t Tool,
    function: &str,
    args: &serde_json::Value,
) -> Result<Prepared<'t>, (String, Error)> {
    let (info, export) = tool
        .function(function)
        .map_err(|e| (function.to_string(), e))?;
    let args = value::canonical_args(&info.name, &info.params, args)
        .map_err(|msg| (info.name.clone(), Error::invalid_args(msg)))?;
    Ok(Prepared {
        function: info,
        export,
        args,
    })
}
