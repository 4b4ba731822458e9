//! The MCP tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) for
//! calls that wait for a human's approval.
//!
//! A `tools/call` whose request declares the extension, and that the policy
//! parks for approval, is answered with a `CreateTaskResult` instead of the
//! `isError` text: the task is the waiting invocation (task id = invocation
//! id), durable before it is returned (the pending record and the approval
//! request are committed by the gate). Every other call answers at once, as
//! for any client: a task is never made for a call that can run now.
//!
//! ```text
//! invocation (record, approval)               task (tasks/get)
//! pending_approval, approval pending    ─▶    working  ("waiting for approval apr_…";
//!                                             past its expiry too, until the reaper
//!                                             closes it: final only as stored)
//! running (approved, on some replica)   ─▶    working  ("approved by …; running")
//! ok / error / refused                  ─▶    completed, result = the CallToolResult a
//!                                             synchronous call gets (denied, expired:
//!                                             isError naming approval_denied / _expired)
//! refused / approval_withdrawn          ─▶    cancelled (tasks/cancel withdrew it)
//! error / host_lost                     ─▶    failed, error = JSON-RPC -32603 (the host
//!                                             running it died: the "server crash" case)
//! ```
//!
//! SEP-2663 reserves `failed` for JSON-RPC errors, and a denial or expiry
//! is a refusal like any other (a synchronous call answers it as an
//! `isError` result), so those tasks complete with that result.
//!
//! Invariants:
//! * A task is visible only to the key that made the call (its tenant and
//!   principal): to anyone else, an unknown task (`-32602`), as for an id
//!   that never existed. Only invocations that waited for approval are
//!   tasks.
//! * The state is read from storage on every `tasks/get`: any replica
//!   answers for a task made on another, and nothing is kept in memory.
//! * `tasks/cancel` withdraws a still-pending approval request
//!   ([`crate::approvals::withdraw`]: conditional, so of a withdrawal and an
//!   approval at the same moment exactly one wins). An approved call that
//!   already runs is not stopped (cancellation is cooperative): it
//!   completes. The acknowledgement is the same in every case.

use super::{Caller, Shared, answer};
use crate::approvals;
use crate::error::ErrorKind;
use crate::record::{InvocationResponse, Status};
use crate::stats::format_time;
use crate::storage::{ApprovalRecord, InvocationRecord, effective_status};
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CreateTaskResult, DetailedTask, GetTaskResult, MetaObject, Task, TaskPayload, TaskStatus,
};
use serde_json::{Value, json};

/// How often a client should poll a task waiting for a person.
pub const POLL_WAITING_MS: u64 = 5_000;
/// How often a client should poll an approved call that runs.
pub const POLL_RUNNING_MS: u64 = 1_000;

/// The task a call waiting for approval becomes (`r.status` is
/// `pending_approval`; `approval` its request, read from storage): created
/// when the request was, as `tasks/get` says too.
pub fn created(r: &InvocationResponse, approval: &ApprovalRecord) -> CreateTaskResult {
    let at = format_time(approval.created_ms);
    let task = Task::new(r.invocation_id.clone(), TaskStatus::Working, &at, &at)
        .with_status_message(waiting_message(&approval.id, approval.expires_ms))
        .with_poll_interval_ms(POLL_WAITING_MS);
    // Records are kept until an operator prunes them: no TTL (`null`).
    let mut meta = MetaObject::new();
    meta.0.insert(
        answer::META_INVOCATION.into(),
        json!({
            "invocation_id": r.invocation_id,
            "status": r.status.as_str(),
            "tool": r.tool,
            "function": r.function,
            "approval_id": r.approval_id,
        }),
    );
    CreateTaskResult::new(task).with_meta(meta)
}

fn waiting_message(approval: &str, expires_ms: i64) -> String {
    let until = format!(" (it expires at {})", format_time(expires_ms));
    format!(
        "waiting for a human's approval: approval request {approval}{until}; the call has not \
         run. Once it is approved the call runs once by itself, and this task completes with \
         its result; a denial or expiry completes it with an isError result."
    )
}

/// A task the caller may see: the invocation and its approval request.
struct Found {
    record: InvocationRecord,
    approval: ApprovalRecord,
}

fn unknown(task_id: &str) -> McpError {
    McpError::invalid_params(
        format!("Unknown task: `{task_id}` (no task of this caller has that id)"),
        Some(json!({"taskId": task_id})),
    )
}

fn storage_error(e: crate::Error) -> McpError {
    McpError::internal_error(
        answer::error_text(&e),
        Some(json!({"kind": e.kind.as_str()})),
    )
}

/// The invocation behind `task_id`, if it is a task of `caller`'s: it
/// waited for an approval requested by the caller's key, in its tenant.
async fn find(shared: &Shared, caller: &Caller, task_id: &str) -> Result<Found, McpError> {
    let plausible = task_id.len() <= 64
        && task_id
            .strip_prefix("inv_")
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !plausible {
        return Err(unknown(task_id));
    }
    let storage = shared.governed.audit().storage();
    let task_id = &crate::ids::InvocationId::from(task_id);
    let approval_id = task_id.approval();
    let approval = storage
        .approval_get(&caller.tenant, &approval_id)
        .await
        .map_err(storage_error)?
        .filter(|a| a.invocation_id == task_id)
        .filter(|a| a.requester.as_deref() == Some(caller.principal.as_str()))
        .ok_or_else(|| unknown(task_id))?;
    let record = storage
        .invocation_get(&caller.tenant, task_id)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| unknown(task_id))?;
    // The stored record, not the record as of this replica's clock: a task
    // is final only once the store says so. A request past its expiry but
    // still stored pending can yet be approved (by a decision whose clock
    // read came before the expiry and whose commit lands after it), so it
    // stays `working` until the reaper closes it (or the approval wins).
    Ok(Found { record, approval })
}

/// `tasks/get`: the task's state as stored now.
pub async fn get(
    shared: &Shared,
    caller: &Caller,
    task_id: &str,
) -> Result<GetTaskResult, McpError> {
    let Found { record, approval } = find(shared, caller, task_id).await?;
    let updated = approval.decided_ms.unwrap_or(approval.created_ms);
    let base = |status, poll: Option<u64>| {
        let mut t = Task::new(
            task_id.to_string(),
            status,
            format_time(approval.created_ms),
            format_time(updated),
        );
        if let Some(p) = poll {
            t = t.with_poll_interval_ms(p);
        }
        t
    };
    let detailed = match record.status.as_str() {
        "pending_approval" => {
            let message = if shared.service.instance().now_ms() >= approval.expires_ms {
                format!(
                    "approval request {} expired at {} with no decision; the call has not run. \
                     This task completes with an isError result once the host closes the request.",
                    approval.id,
                    format_time(approval.expires_ms)
                )
            } else {
                waiting_message(&approval.id, approval.expires_ms)
            };
            DetailedTask::new(
                base(TaskStatus::Working, Some(POLL_WAITING_MS)).with_status_message(message),
                TaskPayload::Working,
            )
        }
        "running" => DetailedTask::new(
            base(TaskStatus::Working, Some(POLL_RUNNING_MS)).with_status_message(format!(
                "approved by {}; the call is running",
                approval.decided_by.as_deref().unwrap_or("an approver")
            )),
            TaskPayload::Working,
        ),
        "ok" | "error" | "refused" => {
            let response: InvocationResponse =
                serde_json::from_str(&record.response).map_err(|e| {
                    storage_error(crate::Error::corrupt(format!(
                        "stored invocation record {task_id}: {e}"
                    )))
                })?;
            let kind = response.error.as_ref().map(|e| e.kind);
            match kind {
                Some(ErrorKind::ApprovalWithdrawn) => DetailedTask::new(
                    base(TaskStatus::Cancelled, None).with_status_message(
                        "withdrawn by tasks/cancel before anyone decided it; the call did not run",
                    ),
                    TaskPayload::Cancelled,
                ),
                Some(ErrorKind::HostLost) => {
                    let e = response.error.clone().unwrap_or_else(|| {
                        crate::Error::new(ErrorKind::HostLost, "the host was lost")
                    });
                    let mut error = serde_json::Map::new();
                    error.insert("code".into(), json!(-32603));
                    error.insert("message".into(), json!(answer::error_text(&e)));
                    error.insert(
                        "data".into(),
                        json!({"kind": e.kind.as_str(), "invocationId": task_id}),
                    );
                    DetailedTask::new(
                        base(TaskStatus::Failed, None).with_status_message(
                            "the host running the approved call stopped before it finished",
                        ),
                        TaskPayload::Failed { error },
                    )
                }
                _ => {
                    let tool = shared
                        .tools
                        .version(
                            &caller.tenant,
                            &record.tool,
                            record.version.as_deref().unwrap_or_default(),
                        )
                        .await
                        .ok();
                    let function = tool
                        .as_deref()
                        .and_then(|t| answer::function(t, &response.function));
                    let result = answer::result_of(function, &response);
                    let Ok(Value::Object(result)) = serde_json::to_value(&result) else {
                        return Err(McpError::internal_error(
                            "the task's result does not serialise as an object",
                            None,
                        ));
                    };
                    DetailedTask::new(
                        base(TaskStatus::Completed, None),
                        TaskPayload::Completed { result },
                    )
                }
            }
        }
        other => {
            return Err(storage_error(crate::Error::corrupt(format!(
                "stored invocation record {task_id} has status `{other}`"
            ))));
        }
    };
    Ok(GetTaskResult::new(detailed))
}

/// `tasks/cancel`: withdraw the approval request if nobody decided it yet;
/// otherwise nothing (a decided call is not stopped). Acknowledged the same
/// either way; an unknown task is `-32602`.
pub async fn cancel(shared: &Shared, caller: &Caller, task_id: &str) -> Result<(), McpError> {
    let Found { record, approval } = find(shared, caller, task_id).await?;
    let now = shared.service.instance().now_ms();
    if record.status != Status::PendingApproval
        || effective_status(&approval, now) != crate::storage::ApprovalStatus::Pending
    {
        return Ok(());
    }
    let audit = shared.governed.audit();
    let storage = audit.storage().as_ref();
    match approvals::withdraw(storage, audit, now, &approval, &caller.principal).await {
        Ok(_) => Ok(()),
        // Decided (or expired) meanwhile: that decision stands.
        Err(e) if e.kind == ErrorKind::Conflict => Ok(()),
        Err(e) => Err(storage_error(e)),
    }
}

/// `tasks/update`: no task of Toolhost's ever asks the client for input, so
/// responses are ignored (as SEP-2663 says for keys not outstanding); an
/// unknown task is `-32602`.
pub async fn update(shared: &Shared, caller: &Caller, task_id: &str) -> Result<(), McpError> {
    find(shared, caller, task_id).await.map(|_| ())
}
