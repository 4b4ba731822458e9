//! Human approvals: calls the policy parks (`approval_required`) wait for a
//! person with the `approve` role, who is not the requester.
//!
//! The gate stores the decision packet with the pending invocation's record
//! (one transaction): tenant, workflow, task, tool, function, version, the
//! arguments (redacted view and hash for approvers; the real ones to run
//! with), the deciding rule, the requesting key and the time. [`decide`]
//! settles a request exactly once: the pending → approved/denied transition
//! is an atomic compare-and-set in storage, so of an approve and a deny at
//! the same moment one wins, and a replayed approval finds it decided and
//! does nothing. Approval runs the call once, under the waiting invocation's
//! id, with `context.approved = true` for policy, and with the tool version
//! that was requested; its result replaces the pending record. Denial and
//! expiry (the TTL) are final. Every step is in the audit trail.

use crate::audit::AuditLog;
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::gate::CallContext;
use crate::invoke::{Call, InvocationResponse, Outcome, Status};
use crate::limits::Limits;
use crate::registry::Registry;
use crate::service::InvocationService;
use crate::storage::{ApprovalRecord, Batch, InvocationRecord, Storage};
use serde_json::{Value, json};
use std::sync::Arc;

/// What approvers see of a request.
pub fn view(a: &ApprovalRecord, now: i64) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_else(|_| json!({}));
    v["status"] = json!(effective_status(a, now));
    v["args"] = serde_json::from_str(&a.args_redacted).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("args_redacted");
    }
    v
}

/// The status as of `now`: a pending request past its expiry is `expired`.
pub fn effective_status(a: &ApprovalRecord, now: i64) -> &str {
    if a.status == "pending" && now >= a.expires_ms {
        "expired"
    } else {
        &a.status
    }
}

/// A tenant's requests with an effective status (`pending`, `approved`,
/// `denied`, `expired`; all when `None`), newest first, after `cursor` (a
/// [`cursor`] of the previous page's last request).
pub async fn list(
    storage: &dyn Storage,
    tenant: &str,
    status: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<ApprovalRecord>> {
    let before = match cursor {
        None => None,
        Some(c) => Some(
            c.split_once('.')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
                .filter(|(_, id)| id.starts_with("apr_"))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidRequest,
                        format!("`cursor` {c:?} is not a cursor this server gave"),
                    )
                })?,
        ),
    };
    if let Some(other) =
        status.filter(|s| !matches!(*s, "pending" | "expired" | "approved" | "denied"))
    {
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            format!("unknown approval status `{other}`: use pending, approved, denied or expired"),
        ));
    }
    storage
        .approval_list(tenant, status, now_ms(), before, limit)
        .await
}

/// Where a page that ends with `a` continues.
pub fn cursor(a: &ApprovalRecord) -> String {
    format!("{}.{}", a.created_ms, a.id)
}

/// Approve or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Deny,
}

/// What deciding needs.
pub struct Decider {
    pub storage: Arc<dyn Storage>,
    pub registry: Registry,
    pub service: Arc<InvocationService>,
    pub audit: Arc<AuditLog>,
    /// Invocation limits for the approved run (policy may set others).
    pub limits: Limits,
}

/// A decision taken: the request as decided, and the approved run.
pub struct Decided {
    pub approval: ApprovalRecord,
    pub outcome: Option<Outcome>,
}

/// Decide request `id` of `tenant` as `approver` (a key id, or `cli:…`).
pub async fn decide(
    d: &Decider,
    tenant: &str,
    id: &str,
    approver: &str,
    verdict: Verdict,
    reason: Option<&str>,
) -> Result<Decided> {
    let not_found = || Error::new(ErrorKind::NotFound, format!("no approval request `{id}`"));
    let request = d
        .storage
        .approval_get(tenant, id)
        .await?
        .ok_or_else(not_found)?;
    if request.requester.as_deref() == Some(approver) {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "the key that requested a call may not decide it; another approver must",
        ));
    }
    // Load the requested version before deciding, so that an approval is
    // never spent on a call that cannot run.
    let tool = match verdict {
        Verdict::Approve => {
            let version = request.version.clone().ok_or_else(|| {
                Error::internal("the approval request does not name a tool version")
            })?;
            Some(Arc::new(
                d.registry
                    .load_version(tenant, &request.tool, &version)
                    .await?
                    .tool,
            ))
        }
        Verdict::Deny => None,
    };
    let status = match verdict {
        Verdict::Approve => "approved",
        Verdict::Deny => "denied",
    };
    let now = now_ms();
    let Some(decided) = d
        .storage
        .approval_decide(tenant, id, status, approver, reason, now)
        .await?
    else {
        let current = d
            .storage
            .approval_get(tenant, id)
            .await?
            .ok_or_else(not_found)?;
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "approval request `{id}` is already {}; decisions are final",
                effective_status(&current, now)
            ),
        ));
    };
    let record = json!({
        "type": "approval_decision",
        "approval_id": id,
        "invocation_id": decided.invocation_id,
        "decision": status,
        "decided_by": approver,
        "reason": reason,
        "time_ms": now,
        "tool": decided.tool,
        "function": decided.function,
        "args_sha256": decided.args_sha256,
    });
    let mut batch = Batch::default();
    if verdict == Verdict::Deny {
        batch.invocations.push(
            final_record(
                d.storage.as_ref(),
                &decided,
                Error::new(
                    ErrorKind::ApprovalDenied,
                    format!(
                        "denied by {approver}{}",
                        reason.map(|r| format!(": {r}")).unwrap_or_default()
                    ),
                ),
                now,
            )
            .await?,
        );
    }
    d.audit
        .append_settling(vec![(tenant.to_string(), now, record)], batch)
        .await?;
    // If this process dies while the approved call runs, the approval stays
    // `approved` and the record `pending_approval`: the call may have had
    // effects, so it is not run again automatically; [`current_record`]
    // reads such a record as failed once [`ABANDONED_AFTER_MS`] passed.
    let outcome = match tool {
        Some(tool) => {
            // The stored arguments are erased by the decision; these were
            // read before it.
            let args: Value = serde_json::from_str(&request.args)
                .map_err(|e| Error::internal(format!("stored arguments: {e}")))?;
            let call = Call {
                function: decided.function.clone(),
                args,
                limits: d.limits.clone(),
                context: CallContext {
                    tenant: Some(tenant.to_string()),
                    workflow: decided.workflow.clone(),
                    task_id: decided.task_id.clone(),
                    principal: decided.requester.clone(),
                    approval: Some(decided.id.clone()),
                    idempotency_key: None,
                    callback_url: None,
                },
            };
            Some(
                d.service
                    .run_approved(decided.invocation_id.clone(), tool, call)
                    .await?,
            )
        }
        None => None,
    };
    Ok(Decided {
        approval: decided,
        outcome,
    })
}

/// How long after an approval an invocation record may still read
/// `pending_approval` while its call runs. Past this, the process that ran
/// it is taken to have died before the result was stored, and the record
/// reads as failed with kind `internal`. Calls end long before (default
/// wall-clock limit 10 s); a policy that grants a tool more than this reads
/// as failed while it still runs, until its result replaces the record.
pub const ABANDONED_AFTER_MS: i64 = 15 * 60 * 1000;

/// The waiting invocation's record, made final with `error` (denied,
/// expired, or abandoned by a process that died).
async fn final_record(
    storage: &dyn Storage,
    a: &ApprovalRecord,
    error: Error,
    now: i64,
) -> Result<InvocationRecord> {
    let Some(existing) = storage.invocation_get(&a.tenant, &a.invocation_id).await? else {
        return Err(Error::internal(format!(
            "the invocation {} waiting for approval has no record",
            a.invocation_id
        )));
    };
    let mut response: InvocationResponse = serde_json::from_str(&existing.response)
        .map_err(|e| Error::internal(format!("stored invocation record: {e}")))?;
    // The call never ran (refused), or ran and its end was lost (error).
    let status = if error.kind == ErrorKind::Internal {
        Status::Error
    } else {
        Status::Refused
    };
    response.status = status;
    response.error = Some(error.clone());
    Ok(InvocationRecord {
        status: status.as_str().to_string(),
        error_kind: Some(error.kind.as_str().to_string()),
        response: serde_json::to_string(&response).unwrap_or_default(),
        created_ms: existing.created_ms.min(now),
        ..existing
    })
}

/// An invocation record as of now: one waiting for an approval that
/// expired reads as refused with `approval_expired`; one whose approved
/// call's process died before storing the result reads as an `internal`
/// error once [`ABANDONED_AFTER_MS`] passed (the call may have had effects;
/// it is never run again automatically).
pub async fn current_record(
    storage: &dyn Storage,
    record: InvocationRecord,
) -> Result<InvocationRecord> {
    if record.status != Status::PendingApproval.as_str() {
        return Ok(record);
    }
    let approval_id = record.id.replacen("inv_", "apr_", 1);
    let now = now_ms();
    match storage.approval_get(&record.tenant, &approval_id).await? {
        Some(a) if effective_status(&a, now) == "expired" => {
            final_record(
                storage,
                &a,
                Error::new(
                    ErrorKind::ApprovalExpired,
                    "nobody decided the approval request before it expired",
                ),
                now,
            )
            .await
        }
        Some(a)
            if a.status == "approved"
                && a.decided_ms.is_some_and(|t| now - t > ABANDONED_AFTER_MS) =>
        {
            final_record(
                storage,
                &a,
                Error::internal(
                    "the approved call started but the host stopped before its result was stored; \
                     it may have had effects and is not run again: check its target before retrying",
                ),
                now,
            )
            .await
        }
        _ => Ok(record),
    }
}
