//! `host approvals list | show | approve | deny`: decide parked calls from
//! the command line (on the data dir a server may be using). Decisions are
//! recorded as made by `cli:<user>`.

use super::data::DataDir;
use std::path::PathBuf;
use std::sync::Arc;
use toolhost::approvals::{self, Decider, Verdict};
use toolhost::audit::AuditLog;
use toolhost::budget::Ledger;
use toolhost::clock::now_ms;
use toolhost::gate::Governed;
use toolhost::ids::TenantId;
use toolhost::policy::Policy;
use toolhost::secrets::FileAndEnv;
use toolhost::service::{InvocationService, Keys};
use toolhost::{Error, ErrorKind, Host};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Approval requests, newest first.
    List {
        #[arg(long, value_parser = TenantId::existing)]
        tenant: TenantId,
        /// pending, approved, denied, expired (default: all).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataDir,
    },
    /// Approve a request: the call runs now, once; prints its result.
    Approve {
        id: String,
        #[arg(long, value_parser = TenantId::existing)]
        tenant: TenantId,
        #[arg(long)]
        reason: Option<String>,
        /// Secrets for the policy's grants, as for `host serve`.
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        #[command(flatten)]
        data: DataDir,
    },
    /// Deny a request (final).
    Deny {
        id: String,
        #[arg(long, value_parser = TenantId::existing)]
        tenant: TenantId,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        data: DataDir,
    },
}

pub async fn main(cmd: Command) -> i32 {
    super::exit_code(run(cmd).await)
}

/// Say where the decision's callback is, if the request gave one: queued in
/// the outbox, which a running `host serve` (checking its own
/// `--callback-allow`) delivers — never sent from here, where no allowlist
/// is configured.
fn notify(decided: &approvals::Decided) {
    if let Some(url) = &decided.approval.callback_url {
        eprintln!(
            "callback {url}: queued; a running `host serve` on this store delivers it \
             (GET /v1/invocations/{} shows its fate)",
            decided.approval.invocation_id
        );
    }
}

fn approver() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

async fn decider(data: &DataDir, secrets: Option<&std::path::Path>) -> toolhost::Result<Decider> {
    let storage = data.storage().await?;
    let stored = storage.policy_current().await?.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidPolicy,
            "the data dir has no stored policy (`host policy set FILE`)",
        )
    })?;
    let policy = Policy::parse(&stored.name, &stored.text)?;
    let audit = AuditLog::open(storage.clone(), data.key_source()).await?;
    let secrets = FileAndEnv::new(secrets).map_err(|e| Error::new(ErrorKind::InvalidArgs, e))?;
    let governed = Arc::new(Governed::new(
        Arc::new(policy),
        Ledger::new(storage.clone()),
        audit.clone(),
        Arc::new(secrets),
    ));
    let runtime = super::runtime()?;
    Ok(Decider {
        registry: super::registry(data, storage.clone(), runtime.clone(), Default::default())?,
        service: Arc::new(InvocationService::new(
            Arc::new(Host::new(runtime, governed.clone())),
            Some(Keys {
                audit: audit.clone(),
                retention: toolhost::idempotency::DEFAULT_RETENTION,
            }),
            governed.instance().clone(),
        )),
        storage,
        audit,
        limits: toolhost::Limits::default(),
    })
}

async fn run(cmd: Command) -> toolhost::Result<i32> {
    match cmd {
        Command::List {
            tenant,
            status,
            json,
            data,
        } => {
            let storage = data.storage().await?;
            let found =
                approvals::list(storage.as_ref(), &tenant, status.as_deref(), None, 500).await?;
            let now = now_ms();
            if json {
                let list: Vec<_> = found.iter().map(|a| approvals::view(a, now)).collect();
                out!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                for a in &found {
                    out!(
                        "{}  {:8}  {}/{}  args={}  rule: {}  requested by {}",
                        a.id,
                        approvals::effective_status(a, now),
                        a.tool,
                        a.function,
                        a.args_redacted,
                        a.rule,
                        a.requester.as_deref().unwrap_or("-"),
                    );
                }
            }
            Ok(0)
        }
        Command::Approve {
            id,
            tenant,
            reason,
            secrets,
            data,
        } => {
            let d = decider(&data, secrets.as_deref()).await?;
            // The approved run is leased to this process: keep the lease
            // while it runs, so a server on the same store does not reap it.
            let renewer = d.service.start_renewer();
            let decided = approvals::decide(
                &d,
                &tenant,
                &id.as_str().into(),
                &approver(),
                Verdict::Approve,
                reason.as_deref(),
            )
            .await;
            for task in renewer {
                task.abort();
            }
            let decided = decided?;
            let Some(outcome) = &decided.outcome else {
                return Err(Error::internal("an approval ran nothing"));
            };
            notify(&decided);
            out!(
                "{}",
                serde_json::to_string_pretty(&outcome.response()).unwrap_or_default()
            );
            Ok(if outcome.ok { 0 } else { 1 })
        }
        Command::Deny {
            id,
            tenant,
            reason,
            data,
        } => {
            let d = decider(&data, None).await?;
            let decided = approvals::decide(
                &d,
                &tenant,
                &id.as_str().into(),
                &approver(),
                Verdict::Deny,
                reason.as_deref(),
            )
            .await;
            let decided = decided?;
            notify(&decided);
            eprintln!("denied {}", decided.approval.id);
            Ok(0)
        }
    }
}
