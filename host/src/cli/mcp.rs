//! `host mcp`: MCP over stdio for one tenant, for desktop clients that
//! launch a local server. The same registry, gate and audit trail as `host
//! serve` (the data dir's); stdout carries only the protocol, logs go to
//! stderr.

use super::data::DataDir;
use std::path::PathBuf;
use std::sync::Arc;
use toolhost::audit::AuditLog;
use toolhost::budget::Ledger;
use toolhost::gate::Governed;
use toolhost::ids::TenantId;
use toolhost::mcp::changes::Changes;
use toolhost::mcp::{Caller, McpServer, Shared};
use toolhost::policy::Policy;
use toolhost::secrets::FileAndEnv;
use toolhost::server::tools::{CacheBounds, ToolCache};
use toolhost::service::{InvocationService, Keys};
use toolhost::{Error, ErrorKind, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tenant whose tools are offered and charged (`_`: tools
    /// registered without --tenant).
    #[arg(long, value_name = "TENANT", value_parser = TenantId::parse)]
    tenant: TenantId,
    /// The policy to apply (default: the data dir's stored policy, `host
    /// policy set`).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Secrets for policy grants (as for `host serve`).
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    #[command(flatten)]
    compile: super::compile::CompileArgs,
    #[command(flatten)]
    data: DataDir,
}

pub async fn main(args: Args) -> i32 {
    // Logs on stderr only: stdout is the protocol.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    super::exit_code(run(args).await.map(|()| 0))
}

async fn run(args: Args) -> Result<()> {
    let storage = args.data.storage().await?;
    // A file given is the policy for the whole session; the stored one is
    // followed: a `host policy set` while a client is connected takes
    // effect within a second, as for `host serve`.
    let (policy, follow) = match &args.policy {
        Some(path) => (Policy::load(path)?, None),
        None => {
            let stored = storage.policy_current().await?.ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidPolicy,
                    "no policy: pass --policy FILE, or store one with `host policy set FILE` (nothing runs without a policy)",
                )
            })?;
            (
                Policy::parse(&stored.name, &stored.text)?,
                Some(stored.version),
            )
        }
    };
    let audit = AuditLog::open(storage.clone(), &args.data.path()).await?;
    let secrets = FileAndEnv::new(args.secrets.as_deref())
        .map_err(|e| Error::new(ErrorKind::InvalidArgs, e))?;
    let governed = Arc::new(Governed::new(
        Arc::new(policy),
        Ledger::new(storage.clone()),
        audit.clone(),
        Arc::new(secrets),
    ));
    let runtime = super::runtime()?;
    let registry = super::registry(
        &args.data,
        storage.clone(),
        runtime.clone(),
        args.compile.limits(1)?,
    )?;
    let service = Arc::new(InvocationService::new(
        Arc::new(toolhost::Host::new(runtime, governed.clone())),
        Some(Keys {
            audit,
            retention: toolhost::idempotency::DEFAULT_RETENTION,
        }),
        governed.instance().clone(),
    ));
    let lifecycle = service.start_lifecycle();
    let every = std::time::Duration::from_secs(1);
    let changes = Changes::new(storage.clone(), every);
    let tools = Arc::new(ToolCache::new(
        registry,
        storage,
        every,
        CacheBounds::default(),
    ));
    let follower = follow.map(|version| {
        let governed = governed.clone();
        tokio::spawn(async move { governed.follow_stored_policy(version, every).await })
    });
    let shared = Arc::new(Shared {
        tools,
        service: service.clone(),
        governed,
        limits: toolhost::Limits::default(),
        changes: changes.clone(),
    });
    let server = McpServer::for_caller(
        shared,
        Caller {
            tenant: args.tenant.clone(),
            principal: "stdio".into(),
            hold: None,
            recheck: None,
        },
    );
    let running = rmcp::serve_server(server, rmcp::transport::stdio())
        .await
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("MCP over stdio: {e}")))?;
    // A client on an initialize-based revision (2025-11-25, 2025-06-18)
    // has a session here (the stdio connection) and no subscriptions/listen:
    // it is told of tool-list changes on it, as its revision says.
    let legacy = running
        .peer()
        .peer_info()
        .is_some_and(|p| p.protocol_version < rmcp::model::ProtocolVersion::V_2026_07_28);
    let pusher = match legacy {
        true => Some(tokio::spawn(push_changes(
            changes.clone(),
            args.tenant.clone(),
            running.peer().clone(),
        ))),
        false => None,
    };
    let _ = running.waiting().await;
    changes.stop();
    for task in pusher.into_iter().chain(follower) {
        task.abort();
    }
    // The client is gone: let invocations in flight finish and be recorded.
    service.tracker().close();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(30), service.tracker().wait()).await;
    for task in lifecycle {
        task.abort();
    }
    Ok(())
}

/// `notifications/tools/list_changed` to a session's client whenever the
/// tenant's tool list changes.
async fn push_changes(changes: Arc<Changes>, tenant: TenantId, peer: rmcp::Peer<rmcp::RoleServer>) {
    let mut listener = match changes.listen(&tenant) {
        Ok(l) => l,
        Err(e) => return tracing::warn!("tool-list changes: {}", e.message),
    };
    while listener.changed().await {
        if peer.notify_tool_list_changed().await.is_err() {
            return;
        }
    }
}
