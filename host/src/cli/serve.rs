//! `host serve`: the HTTP API.

use super::data::DataDir;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use toolhost::audit::AuditLog;
use toolhost::budget::Ledger;
use toolhost::gate::Governed;
use toolhost::limits::{parse_bytes, parse_duration, parse_period};
use toolhost::policy::Policy;
use toolhost::secrets::FileAndEnv;
use toolhost::server::{ServeConfig, Server};
use toolhost::storage::Storage;
use toolhost::{Error, ErrorKind, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port). The first
    /// line on stdout is the URL, printed once the server accepts
    /// connections.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
    /// The policy to put in force (stored in the data dir as its new
    /// version). Default: the data dir's stored policy (`host policy set`).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Secrets for policy grants: a YAML (or JSON) map of name to value,
    /// e.g. `shop_token: abc123`; TOOLHOST_SECRET_<NAME> environment
    /// variables also work (the file wins).
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Largest request body (uploads excepted).
    #[arg(long, default_value = "1MiB")]
    max_body: String,
    /// Largest component upload.
    #[arg(long, default_value = "64MiB")]
    max_upload: String,
    /// Deadline for one request, time queued included.
    #[arg(long, default_value = "60s")]
    request_timeout: String,
    /// Requests served at once (also the number of sandbox slots).
    #[arg(long, default_value_t = 64)]
    max_concurrency: u32,
    /// Requests that may wait for a slot; beyond that, 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Requests of one tenant served at once; more wait in the tenant's
    /// queue, and free slots go to tenants in turn. Default: half of
    /// --max-concurrency (at least 1).
    #[arg(long, value_name = "N")]
    tenant_max_concurrency: Option<u32>,
    /// Requests of one tenant that may wait for a slot; beyond that, 429
    /// `tenant_overloaded` with Retry-After. Default: half of --max-queue.
    #[arg(long, value_name = "N")]
    tenant_max_queue: Option<usize>,
    /// Bytes of request bodies (uploads excepted) held in memory at once,
    /// at least --max-body; one tenant holds at most half. A request that
    /// cannot get its bytes waits (within --request-timeout), then 503.
    #[arg(long, default_value = "64MiB")]
    max_body_memory: String,
    /// A connection that does not send a complete request head within this
    /// long (a slow client, or an idle keep-alive connection) is closed.
    #[arg(long, default_value = "30s")]
    header_timeout: String,
    /// Connections open at once; past it the server stops accepting (keep
    /// it under the process's open-file limit, `ulimit -n`).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Default fuel per invocation (a policy may set it per tool).
    #[arg(long)]
    fuel: Option<u64>,
    /// Default linear-memory cap per invocation, e.g. `64MiB`.
    #[arg(long)]
    memory: Option<String>,
    /// Default wall-clock limit per invocation, e.g. `10s`.
    #[arg(long)]
    timeout: Option<String>,
    /// How long answers to Idempotency-Key requests are kept (e.g. 24h, 7d).
    #[arg(long, default_value = "24h")]
    idempotency_retention: String,
    /// How long approval requests wait for a decision before they expire.
    #[arg(long, default_value = "24h")]
    approval_ttl: String,
    /// How long this host's hold on a running invocation lasts unless
    /// renewed (it renews every third of it): if the host dies, another
    /// host's reaper ends its invocations this long after.
    #[arg(long, default_value = "15s")]
    lease: String,
    /// Callback URLs invoke requests may give (repeatable patterns:
    /// `https://hooks.example.com`, `https://*.example.com`,
    /// `http://127.0.0.1:8000-8100`). None: callbacks are refused.
    #[arg(long, value_name = "PATTERN")]
    callback_allow: Vec<String>,
    /// `Host` names `/mcp` answers to besides the loopback names
    /// (repeatable: `tools.example.com` for any port, or `name:port`).
    /// Behind a proxy or load balancer, name the address clients use.
    #[arg(long, value_name = "HOST")]
    mcp_allow_host: Vec<String>,
    /// Browser origins that may use `/mcp` besides the server's own
    /// (repeatable: `https://app.example.com`).
    #[arg(long, value_name = "ORIGIN")]
    mcp_allow_origin: Vec<String>,
    /// The server's public base URL (`https://tools.example.com`): the
    /// resource `/.well-known/oauth-protected-resource` names, and a host
    /// `/mcp` answers to.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Log format on stderr (level from RUST_LOG, default `info,rmcp=warn`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    // --- Compiling and loading tools (registry::compile, server::tools) ---
    // `--compile-timeout` and `--compile-memory`: for uploads and for
    // registered tools this node has not compiled yet.
    #[command(flatten)]
    compile: super::compile::CompileArgs,
    /// Compiles at once; more wait their turn.
    #[arg(long, default_value_t = 2)]
    compile_jobs: usize,
    /// Size bound of this node's compiled-artifact cache
    /// (`<data dir>/artifacts`); least recently used artifacts go first.
    #[arg(long, default_value = "4GiB")]
    artifact_cache: String,
    /// Tool versions kept loaded in memory; least recently used go first.
    #[arg(long, default_value_t = 256)]
    max_loaded_tools: usize,
    // --- end of compiling and loading tools ---
    // --- Observability (observe, server::metrics) ---
    /// Serve Prometheus metrics at `GET /metrics` on this address (its own
    /// listener, no key: bind it where only the scraper reaches it). Off
    /// without it.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Tenants named in metric labels; later tenants are `other`.
    #[arg(long, default_value_t = 100, value_name = "N")]
    metrics_max_tenants: usize,
    /// Per tenant, distinct tool/function pairs, destination hosts and
    /// workflows (each) named in metric labels; later ones are `other`.
    #[arg(long, default_value_t = 50, value_name = "N")]
    metrics_max_names: usize,
    /// Export traces over OTLP/HTTP (protobuf) to this collector
    /// (`http://collector:4318`; spans go to `<URL>/v1/traces`). Without
    /// it, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` turn tracing on; other `OTEL_*`
    /// variables (headers, timeout, service name, resource, sampler, batch)
    /// are honoured; `OTEL_SDK_DISABLED=true` turns it off.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    // --- end of observability ---
    #[command(flatten)]
    data: DataDir,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn bad(flag: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::invalid_args(format!("--{flag}: {e}"))
}

fn config(args: &Args) -> Result<ServeConfig> {
    let max_concurrency = args.max_concurrency.max(1) as usize;
    let max_body = parse_bytes(&args.max_body).map_err(bad("max-body"))? as usize;
    let max_body_memory =
        parse_bytes(&args.max_body_memory).map_err(bad("max-body-memory"))? as usize;
    if max_body_memory < max_body {
        return Err(bad("max-body-memory")(format!(
            "{max_body_memory} bytes is less than --max-body ({max_body} bytes)"
        )));
    }
    if max_body_memory > u32::MAX as usize {
        return Err(bad("max-body-memory")(format!(
            "at most {} bytes (4 GiB - 1)",
            u32::MAX
        )));
    }
    let tenant_max_concurrency = match args.tenant_max_concurrency {
        Some(n) => (n.max(1) as usize).min(max_concurrency),
        None => (max_concurrency / 2).max(1),
    };
    let mut c = ServeConfig {
        max_body,
        max_upload: parse_bytes(&args.max_upload).map_err(bad("max-upload"))? as usize,
        request_timeout: parse_duration(&args.request_timeout).map_err(bad("request-timeout"))?,
        max_concurrency,
        max_queue: args.max_queue,
        tenant_max_concurrency,
        tenant_max_queue: args.tenant_max_queue.unwrap_or(args.max_queue / 2),
        max_body_memory,
        header_timeout: parse_duration(&args.header_timeout).map_err(bad("header-timeout"))?,
        max_connections: args.max_connections.max(1),
        idempotency_retention: parse_period(&args.idempotency_retention)
            .map_err(bad("idempotency-retention"))?,
        approval_ttl: parse_period(&args.approval_ttl).map_err(bad("approval-ttl"))?,
        callback_allow: args.callback_allow.clone(),
        mcp: toolhost::server::mcp::McpConfig {
            allowed_hosts: args.mcp_allow_host.clone(),
            allowed_origins: args.mcp_allow_origin.clone(),
            public_url: args.public_url.clone(),
        },
        ..ServeConfig::default()
    };
    if let Some(url) = &args.public_url {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            return Err(bad("public-url")(format!("`{url}` is not an http(s) URL")));
        }
    }
    // Compiling and loading tools.
    let limits = args.compile.limits(args.compile_jobs)?;
    c.registry = toolhost::registry::RegistryOptions {
        artifact_cache_bytes: parse_bytes(&args.artifact_cache).map_err(bad("artifact-cache"))?,
        ..super::registry_options(&args.data, limits)?
    };
    c.loaded_tools.max_tools = args.max_loaded_tools.max(1);
    c.metrics_listen = args.metrics_listen.clone();
    if let Some(f) = args.fuel {
        c.limits.fuel = Some(f);
    }
    if let Some(m) = &args.memory {
        c.limits.memory_bytes = parse_bytes(m).map_err(bad("memory"))?;
    }
    if let Some(t) = &args.timeout {
        c.limits.timeout = parse_duration(t).map_err(bad("timeout"))?;
    }
    Ok(c)
}

/// The log filter when `RUST_LOG` is not set: `info`, except rmcp's
/// lifecycle lines. `/mcp` is stateless, so rmcp starts and finishes a
/// "service" for every request and says so at `info` with the client's
/// whole `Debug` form: two lines per call that drown the access log (and
/// cost about as much CPU as the call's MCP handling).
pub const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn";

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The policy to serve with, and its stored version.
async fn policy(args: &Args, storage: &dyn Storage) -> Result<(Policy, i64)> {
    let current = storage.policy_current().await?;
    if let Some(path) = &args.policy {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidPolicy,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy".into());
        let policy = Policy::parse(&name, &text)?;
        let version = match current {
            Some(c) if c.text == text && c.name == name => c.version,
            _ => {
                storage
                    .policy_put(&name, &text, toolhost::clock::now_ms())
                    .await?
            }
        };
        return Ok((policy, version));
    }
    match current {
        Some(c) => Ok((Policy::parse(&c.name, &c.text)?, c.version)),
        None => Err(Error::new(
            ErrorKind::InvalidPolicy,
            "no policy: pass --policy FILE, or store one with `host policy set FILE` (nothing runs without a policy)",
        )),
    }
}

pub async fn main(args: Args) -> i32 {
    init_logs(args.log_format);
    match run(args).await {
        Ok(()) => 0,
        Err(e) => {
            super::report(&e);
            if e.kind == ErrorKind::InvalidArgs || e.kind == ErrorKind::InvalidPolicy {
                2
            } else {
                1
            }
        }
    }
}

/// Metrics and traces, as the flags and `OTEL_*` variables ask.
fn observability(args: &Args) -> Result<()> {
    if args.metrics_listen.is_some() {
        toolhost::observe::metrics::install(toolhost::observe::metrics::Bounds {
            tenants: args.metrics_max_tenants.max(1),
            names: args.metrics_max_names.max(1),
        });
    }
    let trace = !toolhost::observe::trace::disabled_by_env()
        && (args.otlp_endpoint.is_some() || toolhost::observe::trace::wanted_by_env());
    if trace {
        let endpoint = toolhost::observe::trace::install(&toolhost::observe::trace::Config {
            endpoint: args.otlp_endpoint.clone(),
        })
        .map_err(Error::invalid_args)?;
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let mut config = config(&args)?;
    observability(&args)?;
    let data = args.data.path();
    let shared = args.data.database_url()?.is_some();
    if shared {
        // Replicas see each other's changes (keys revoked, tools deployed
        // or disabled, policies stored) within a second: they re-read
        // what they remember twice as often.
        config.policy_poll = std::time::Duration::from_millis(500);
        config.state_ttl = std::time::Duration::from_millis(500);
    }
    let storage = args.data.storage().await?;
    toolhost::datadir::warn_if_open(&data);
    let (policy, version) = policy(&args, storage.as_ref()).await?;
    let audit = AuditLog::open(storage.clone(), args.data.key_source()).await?;
    let secrets = FileAndEnv::new(args.secrets.as_deref())
        .map_err(|e| Error::new(ErrorKind::InvalidArgs, e))?;
    let lease = parse_duration(&args.lease).map_err(bad("lease"))?;
    if lease < std::time::Duration::from_millis(300) {
        return Err(Error::invalid_args("--lease: at least 300ms"));
    }
    let instance = toolhost::lease::Instance::new(Arc::new(toolhost::clock::SystemClock), lease);
    let governed = Arc::new(
        Governed::new(
            Arc::new(policy),
            Ledger::new(storage.clone()),
            audit,
            Arc::new(secrets),
        )
        .with_instance(instance),
    );
    let runtime = Arc::new(toolhost::Runtime::new(&toolhost::RuntimeConfig {
        max_instances: config.max_concurrency as u32,
        ..Default::default()
    })?);
    let server = Server::bind(&args.listen, storage, runtime, governed, version, config).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, data_dir = %data.display(), store = %args.data.describe(), policy_version = version, "listening");
    if let Some(metrics) = server.metrics_addr() {
        tracing::info!(metrics_url = %format!("http://{metrics}/metrics"), "serving metrics");
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "http://{addr}");
        let _ = out.flush();
    }
    let served = server.run(shutdown_signal()).await;
    // Export the spans still buffered.
    let _ = tokio::task::spawn_blocking(toolhost::observe::trace::shutdown).await;
    served
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
