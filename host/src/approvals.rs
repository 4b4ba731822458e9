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
//! that was requested; its result replaces the pending record. Denial,
//! expiry (the TTL) and withdrawal by the requester ([`withdraw`]: an MCP
//! client's `tasks/cancel`) are final. Every step is in the audit trail.

use crate::audit::AuditLog;
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::gate::CallContext;
use crate::ids::{ApprovalId, TenantId};
use crate::invoke::{Call, Outcome, Status};
use crate::limits::Limits;
use crate::registry::Registry;
use crate::service::InvocationService;
use crate::storage::ApprovalStatus;
use crate::storage::{
    ApprovalRecord, Decision, End, Expect, InvocationRecord, OutboxMessage, Storage, Work,
};
use serde_json::{Value, json};
use std::sync::Arc;

/// What approvers see of a request.
pub fn view(a: &ApprovalRecord, now: i64) -> Value {
    a.view(now)
}

pub use crate::storage::effective_status;

/// A tenant's requests with an effective status (`pending`, `approved`,
/// `denied`, `expired`, `withdrawn`; all when `None`), newest first, after `cursor` (a
/// [`cursor`] of the previous page's last request).
pub async fn list(
    storage: &dyn Storage,
    tenant: &TenantId,
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
    let status = match status {
        None => None,
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidRequest,
                format!(
                    "unknown approval status `{s}`: use pending, approved, denied, expired or withdrawn"
                ),
            )
        })?),
    };
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
    tenant: &TenantId,
    id: &ApprovalId,
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
    // What runs is what the approver saw the hash of: checked before the
    // decision is spent.
    let approved_args: Option<Value> = match verdict {
        // (A request already decided has no arguments left: the decision
        // below is refused as `conflict`.)
        Verdict::Approve if request.status == crate::storage::ApprovalStatus::Pending => {
            let args: Value = serde_json::from_str(&request.args)
                .map_err(|e| Error::corrupt(format!("stored arguments: {e}")))?;
            if crate::audit::canonical::fingerprint(&args) != request.args_sha256 {
                return Err(Error::corrupt(
                    "the stored arguments no longer match the hash the approver was shown; not run",
                ));
            }
            Some(args)
        }
        _ => None,
    };
    let status = match verdict {
        Verdict::Approve => ApprovalStatus::Approved,
        Verdict::Deny => ApprovalStatus::Denied,
    };
    let instance = d.service.instance().clone();
    let now = instance.now_ms();
    // One unit of work: the decision (only if still pending and unexpired:
    // of two concurrent decisions exactly one wins), its audit entry, and
    // either the waiting row handed to this host to run (approve) or its
    // final record and callback (deny).
    let run = (verdict == Verdict::Approve).then(|| (instance.id.clone(), instance.lease_until()));
    let (entry, mut work) = decision(&request, status, approver, reason, now, run);
    if verdict == Verdict::Deny {
        let error = Error::new(
            ErrorKind::ApprovalDenied,
            format!(
                "denied by {approver}{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
        );
        final_refusal(&mut work, d.storage.as_ref(), &request, error, now).await?;
    }
    commit_decision(&d.audit, d.storage.as_ref(), tenant, id, now, entry, work).await?;
    crate::observe::metrics::approval_decided(
        tenant,
        status.as_str(),
        std::time::Duration::from_millis(u64::try_from(now - request.created_ms).unwrap_or(0)),
    );
    let decided = d
        .storage
        .approval_get(tenant, id)
        .await?
        .ok_or_else(not_found)?;
    // The approved call runs under the waiting invocation's id, its row now
    // this host's (leased): if this host dies while it runs, the reaper
    // finishes it as `host_lost`; it is never run again automatically.
    let outcome = match tool {
        Some(tool) => {
            // The stored arguments are erased by the decision; these were
            // read before it.
            let args = approved_args.clone().unwrap_or_default();
            let call = Call {
                function: decided.function.clone(),
                args,
                limits: d.limits.clone(),
                context: CallContext {
                    tenant: tenant.clone(),
                    workflow: decided.workflow.clone(),
                    task_id: decided.task_id.clone(),
                    principal: decided.requester.clone(),
                    approval: Some(decided.id.clone()),
                    idempotency_key: None,
                    callback_url: decided.callback_url.clone(),
                    transport: Some("approval".into()),
                    traceparent: None,
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

/// Withdraw `request` (as read) as `requester`, the key that asked for
/// the call (an MCP client's `tasks/cancel`): like a denial, final, and only
/// while the request is pending and unexpired (of a withdrawal and a
/// decision at the same moment exactly one wins: the other is `conflict`).
/// The waiting invocation ends `refused` / `approval_withdrawn`; the call
/// never runs. Another key, an approver's included, may not withdraw it.
pub async fn withdraw(
    storage: &dyn Storage,
    audit: &AuditLog,
    now: i64,
    request: &ApprovalRecord,
    requester: &str,
) -> Result<()> {
    let (tenant, id) = (&request.tenant, &request.id);
    if request.requester.as_deref() != Some(requester) {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "only the key that requested a call may withdraw its approval request",
        ));
    }
    let reason = Some("withdrawn by the requester");
    let (entry, mut work) = decision(
        request,
        ApprovalStatus::Withdrawn,
        requester,
        reason,
        now,
        None,
    );
    let error = Error::new(
        ErrorKind::ApprovalWithdrawn,
        "the requester withdrew the approval request before anyone decided it; the call did not run",
    );
    final_refusal(&mut work, storage, request, error, now).await?;
    commit_decision(audit, storage, tenant, id, now, entry, work).await?;
    crate::observe::metrics::approval_decided(
        tenant,
        "withdrawn",
        std::time::Duration::from_millis(u64::try_from(now - request.created_ms).unwrap_or(0)),
    );
    Ok(())
}

/// A decision on `request` by `by` at `now`: its audit entry, and the unit
/// of work that applies it (only if the request is still pending: see
/// [`Decision`]); `run`: the waiting row handed to this owner and lease.
fn decision(
    request: &ApprovalRecord,
    status: ApprovalStatus,
    by: &str,
    reason: Option<&str>,
    now: i64,
    run: Option<(String, i64)>,
) -> (Value, Work) {
    let entry = json!({
        "type": "approval_decision",
        "approval_id": request.id,
        "invocation_id": request.invocation_id,
        "decision": status,
        "decided_by": by,
        "reason": reason,
        "time_ms": now,
        "tool": request.tool,
        "function": request.function,
        "args_sha256": request.args_sha256,
    });
    let work = Work {
        decide: Some(Decision {
            tenant: request.tenant.clone(),
            approval_id: request.id.clone(),
            status,
            decided_by: Some(by.to_string()),
            reason: reason.map(str::to_string),
            now_ms: now,
            run,
        }),
        ..Work::default()
    };
    (entry, work)
}

/// A decision that ends the waiting invocation without running it (a
/// denial, a withdrawal): its final `refused` record, expected still
/// pending, and the callback, into `work`.
async fn final_refusal(
    work: &mut Work,
    storage: &dyn Storage,
    request: &ApprovalRecord,
    error: Error,
    now: i64,
) -> Result<()> {
    let existing = storage
        .invocation_get(&request.tenant, &request.invocation_id)
        .await?
        .ok_or_else(|| {
            Error::corrupt(format!(
                "the invocation {} waiting for approval has no record",
                request.invocation_id
            ))
        })?;
    work.end = Some(End {
        record: InvocationRecord {
            status: Status::Refused,
            error_kind: Some(error.kind.as_str().into()),
            response: crate::record::ended(&existing.response, Status::Refused, error)?,
            ..existing
        },
        expect: Expect::Pending,
        used: Some(Vec::new()),
    });
    if let Some(url) = &request.callback_url {
        work.outbox.push(OutboxMessage::new(
            &request.tenant,
            &request.invocation_id,
            &request.id,
            url,
            now,
        ));
    }
    Ok(())
}

/// Commit a decision's unit of work with its audit entry; a request no
/// longer pending (decided, withdrawn or expired meanwhile) is `conflict`,
/// naming what it is now.
async fn commit_decision(
    audit: &AuditLog,
    storage: &dyn Storage,
    tenant: &TenantId,
    id: &ApprovalId,
    now: i64,
    entry: Value,
    work: Work,
) -> Result<()> {
    match audit
        .commit(vec![(tenant.to_string(), now, entry)], work)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind == ErrorKind::Conflict => {
            let current = storage.approval_get(tenant, id).await?.ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("no approval request `{id}`"))
            })?;
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "approval request `{id}` is already {}; decisions are final",
                    effective_status(&current, now)
                ),
            ))
        }
        Err(e) => Err(e),
    }
}

/// An invocation record as of now: one waiting for an approval that
/// expired reads as refused with `approval_expired` (the reaper makes it so
/// in the store soon after).
pub async fn current_record(
    storage: &dyn Storage,
    record: InvocationRecord,
) -> Result<InvocationRecord> {
    if record.status != Status::PendingApproval {
        return Ok(record);
    }
    let approval_id = record.id.approval();
    let approval = storage.approval_get(&record.tenant, &approval_id).await?;
    record_as_of(record, approval.as_ref(), now_ms())
}

/// [`current_record`] with the record's approval request already read.
pub fn record_as_of(
    record: InvocationRecord,
    approval: Option<&ApprovalRecord>,
    now: i64,
) -> Result<InvocationRecord> {
    match approval {
        Some(a)
            if record.status == Status::PendingApproval
                && effective_status(a, now) == ApprovalStatus::Expired =>
        {
            let error = Error::new(
                ErrorKind::ApprovalExpired,
                "nobody decided the approval request before it expired",
            );
            Ok(InvocationRecord {
                status: Status::Refused,
                error_kind: Some(error.kind.as_str().into()),
                response: crate::record::ended(&record.response, Status::Refused, error)?,
                ..record
            })
        }
        _ => Ok(record),
    }
}
