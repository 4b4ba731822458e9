//! Keeping invocations honest about who runs them: lease renewal and the
//! reaper.
//!
//! * The **renewer** extends, every third of a lease, the leases of the
//!   invocations this host is running ([`crate::lease::Live`]).
//! * The **reaper** finishes what nobody will: a running row whose lease
//!   ran out (its host died or hung), a row this host's own task abandoned
//!   (an unrecorded end, a panic), and an approval request past its expiry.
//!   A lost invocation that was admitted ends as `error` / `host_lost`, its
//!   reservation charged at the worst case (it may have spent it all), its
//!   Idempotency-Key answered so, its approval's callback queued; one that
//!   never reached admission is forgotten with its key (nothing ran; a
//!   retry runs it). Every move is conditional on the row's state, so a
//!   reaper on every host is safe: one wins, the others find nothing to do.
//!   Nothing is ever run again automatically.

use super::InvocationService;
use crate::audit::canonical;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ApprovalId, InvocationId};
use crate::record::{InvocationResponse, Status, Usage, ended};
use crate::storage::{
    ApprovalRecord, Decision, End, Expect, IdempotencyDone, InvocationRecord, Lost, OutboxMessage,
    Work,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Rows taken per reaper round.
const REAP_BATCH: i64 = 100;

/// How often the sweeps run.
const SWEEP_EVERY_MS: i64 = 60_000;

/// How long delivered or failed callbacks are kept.
const OUTBOX_KEEP_MS: i64 = 7 * 86_400_000;

impl InvocationService {
    /// Start the renewer, the reaper and the outbox deliverer on the
    /// current runtime (a server); they stop when the returned handles are
    /// aborted.
    pub fn start_lifecycle(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = self.start_renewer();
        if self.keys().is_none() {
            return tasks;
        }
        let every = self.every();
        let reap = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                // Each round on a task of its own: a panic (a row that does
                // not decode) ends the round, not the reaper.
                let round = reap.clone();
                match tokio::spawn(async move { round.reap().await }).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("reaper: {}", e.message),
                    Err(e) => tracing::error!("reaper round failed: {e}"),
                }
                let wake = reap.instance.live().wake.notified();
                let _ = tokio::time::timeout(every, wake).await;
            }
        }));
        let deliver = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let round = deliver.clone();
                match tokio::spawn(async move { round.deliver_outbox().await }).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("outbox: {}", e.message),
                    Err(e) => tracing::error!("outbox round failed: {e}"),
                }
                tokio::time::sleep(super::outbox::POLL).await;
            }
        }));
        tasks
    }

    /// Start only the lease renewer (a short-lived process such as `host
    /// run`: it keeps its own invocations' leases and leaves reaping and
    /// callbacks to the servers).
    pub fn start_renewer(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        if self.keys().is_none() {
            return Vec::new();
        }
        let every = self.every();
        let renew = self.clone();
        vec![tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let round = renew.clone();
                match tokio::spawn(async move { round.renew().await }).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("renewing leases: {}", e.message),
                    Err(e) => tracing::error!("renewal round failed: {e}"),
                }
            }
        })]
    }

    /// How often the renewer and the reaper run: a third of a lease.
    fn every(&self) -> Duration {
        (self.instance.lease / 3).max(Duration::from_millis(50))
    }

    /// Extend the leases of the invocations this host runs.
    pub async fn renew(&self) -> Result<u64> {
        let Some(keys) = self.keys() else {
            return Ok(0);
        };
        let ids = self.instance.live().ids();
        if ids.is_empty() {
            return Ok(0);
        }
        keys.audit
            .storage()
            .invocation_renew(&self.instance.id, ids, self.instance.lease_until())
            .await
    }

    /// One reaper round: abandoned rows of this host, rows whose lease ran
    /// out, approval requests past their expiry. Returns how many it ended.
    pub async fn reap(&self) -> Result<usize> {
        let Some(keys) = self.keys() else {
            return Ok(0);
        };
        let storage = keys.audit.storage().clone();
        let mut done = 0;
        for id in self.instance.live().take_abandoned() {
            // Its own host gives it up: no need to wait for the lease.
            let lost = storage.invocation_running(&id).await?;
            if let Some(lost) = lost.filter(|l| l.run.owner == self.instance.id) {
                let expect = Expect::Abandoned {
                    owner: self.instance.id.clone(),
                };
                done += usize::from(self.finish_lost(&lost, expect).await?);
            }
        }
        let now = self.instance.now_ms();
        // Other hosts' rows: one host of a fleet sweeps at a time (every
        // move is conditional, so two would be safe, only wasteful).
        if !storage.lead("reaper").await? {
            return Ok(done);
        }
        let live: std::collections::HashSet<InvocationId> =
            self.instance.live().ids().into_iter().collect();
        let mut mine = Vec::new();
        for lost in storage.invocation_expired(now, REAP_BATCH).await? {
            // This host is running it (its renewal came late: a stall, a
            // clock step): renew it, never reap it.
            if lost.run.owner == self.instance.id && live.contains(&lost.run.id) {
                mine.push(lost.run.id.clone());
                continue;
            }
            let expect = Expect::Expired { now_ms: now };
            done += usize::from(self.finish_lost(&lost, expect).await?);
        }
        if !mine.is_empty() {
            storage
                .invocation_renew(&self.instance.id, mine, self.instance.lease_until())
                .await?;
        }
        for a in storage.approvals_due(now, REAP_BATCH).await? {
            // One request that cannot be finished (a hand-edited row) must
            // not hold up the others, or the sweeps below.
            match self.expire(&a, now).await {
                Ok(ended) => done += usize::from(ended),
                Err(e) => tracing::warn!(
                    approval_id = %a.id,
                    kind = e.kind.as_str(),
                    "reaper: could not expire an approval request: {}",
                    e.message
                ),
            }
        }
        // What only grows otherwise: expired cache entries, delivered or
        // given-up callbacks after a week (at most once a minute).
        let due = {
            let mut last = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            let due = now.saturating_sub(*last) >= SWEEP_EVERY_MS;
            if due {
                *last = now;
            }
            due
        };
        if due {
            storage.cache_sweep(now).await?;
            storage
                .outbox_sweep(now.saturating_sub(OUTBOX_KEEP_MS))
                .await?;
        }
        Ok(done)
    }

    /// End a lost invocation (or forget one that never ran). Returns
    /// whether this call did it (another reaper may have).
    async fn finish_lost(&self, lost: &Lost, expect: Expect) -> Result<bool> {
        let keys = self.keys().expect("the reaper runs with a store");
        let storage = keys.audit.storage();
        if !lost.admitted && lost.approval_id.is_none() {
            let forgotten = storage.invocation_forget(&lost.run.id, expect).await?;
            if forgotten {
                tracing::info!(invocation_id = %lost.run.id, "forgot an invocation that never ran (its host was lost)");
            }
            return Ok(forgotten);
        }
        let now = self.instance.now_ms();
        let run = &lost.run;
        let message = if lost.admitted {
            "the host running this call stopped before it finished; it may have had effects and is not run again: check its target before retrying"
        } else {
            "the host that was to run this approved call stopped before it ran; it is not run again: request it anew"
        };
        let error = Error::new(ErrorKind::HostLost, message);
        let response = InvocationResponse {
            invocation_id: run.id.clone(),
            status: Status::Error,
            tool: run.tool.clone(),
            function: run.function.clone(),
            version: run.version.clone(),
            result: None,
            error: Some(error.clone()),
            usage: Usage::default(),
            approval_id: None,
            cached: false,
        };
        let body = serde_json::to_string(&response).unwrap_or_default();
        let record = InvocationRecord {
            id: run.id.clone(),
            tenant: run.tenant.clone(),
            tool: run.tool.clone(),
            function: run.function.clone(),
            version: run.version.clone(),
            workflow: run.workflow.clone(),
            task_id: run.task_id.clone(),
            principal: run.principal.clone(),
            status: Status::Error,
            error_kind: Some(ErrorKind::HostLost.as_str().into()),
            created_ms: run.created_ms,
            response: body.clone(),
        };
        let mut work = Work {
            end: Some(End {
                record,
                expect,
                used: None,
            }),
            ..Work::default()
        };
        if let Some(key) = &run.idempotency_key {
            work.idempotency.push(IdempotencyDone {
                tenant: run.tenant.clone(),
                key: key.clone(),
                invocation_id: run.id.clone(),
                response: body,
            });
        }
        if let (Some(approval_id), Some(url)) = (&lost.approval_id, &lost.callback_url) {
            work.outbox.push(outbox_message(run, approval_id, url, now));
        }
        let entry = json!({
            "type": "invocation",
            "invocation_id": run.id,
            "time_ms": now,
            "tenant": run.tenant,
            "workflow": run.workflow,
            "task_id": run.task_id,
            "principal": run.principal,
            "tool": run.tool,
            "version": run.version,
            "function": run.function,
            "transport": run.transport,
            "decision": {"effect": "lost", "rule": "reaper"},
            "charged": "worst case",
            "outcome": {
                "ok": false,
                "status": Status::Error,
                "error_kind": ErrorKind::HostLost,
                "error": message,
            },
            "lost": {"owner": run.owner, "lease_until": run.lease_until, "admitted": lost.admitted},
            "approval_id": lost.approval_id,
            "idempotency_key_sha256": run.idempotency_key.as_ref().map(|k| canonical::sha256_hex(k.as_bytes())),
        });
        match keys
            .audit
            .commit(vec![(run.tenant.to_string(), now, entry)], work)
            .await
        {
            Ok(_) => {
                tracing::warn!(invocation_id = %run.id, owner = %run.owner, "reaped an invocation whose host was lost");
                Ok(true)
            }
            Err(e) if e.kind == ErrorKind::Conflict => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// End an approval request nobody decided in time.
    async fn expire(&self, a: &ApprovalRecord, now: i64) -> Result<bool> {
        let keys = self.keys().expect("the reaper runs with a store");
        let storage = keys.audit.storage();
        let Some(existing) = storage.invocation_get(&a.tenant, &a.invocation_id).await? else {
            return Ok(false);
        };
        let error = Error::new(
            ErrorKind::ApprovalExpired,
            "nobody decided the approval request before it expired",
        );
        let record = InvocationRecord {
            status: Status::Refused,
            error_kind: Some(error.kind.as_str().into()),
            response: ended(&existing.response, Status::Refused, error)?,
            ..existing
        };
        let mut work = Work {
            decide: Some(Decision {
                tenant: a.tenant.clone(),
                approval_id: a.id.clone(),
                status: crate::storage::ApprovalStatus::Expired,
                decided_by: None,
                reason: None,
                now_ms: now,
                run: None,
            }),
            end: Some(End {
                record,
                expect: Expect::Pending,
                used: Some(Vec::new()),
            }),
            ..Work::default()
        };
        if let Some(url) = &a.callback_url {
            work.outbox.push(OutboxMessage::new(
                &a.tenant,
                &a.invocation_id,
                &a.id,
                url,
                now,
            ));
        }
        let entry = json!({
            "type": "approval_decision",
            "approval_id": a.id,
            "invocation_id": a.invocation_id,
            "decision": "expired",
            "decided_by": null,
            "time_ms": now,
            "tool": a.tool,
            "function": a.function,
            "args_sha256": a.args_sha256,
        });
        match keys
            .audit
            .commit(vec![(a.tenant.to_string(), now, entry)], work)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind == ErrorKind::Conflict => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn outbox_message(
    run: &crate::storage::NewRun,
    approval_id: &ApprovalId,
    url: &str,
    now: i64,
) -> OutboxMessage {
    OutboxMessage::new(&run.tenant, &run.id, approval_id, url, now)
}
