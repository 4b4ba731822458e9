//! `host register` and `host tools list | describe | deploy | disable | enable`.

use super::data::DataDir;
use std::io::Write;
use std::path::PathBuf;
use toolhost::ids::TenantId;
use toolhost::registry::Registry;

/// `host register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The component to register.
    component: PathBuf,
    /// The tool's name (per tenant; letters, digits, `-`, `_`).
    #[arg(long)]
    name: String,
    /// The version (default: the next number). Versions are immutable.
    #[arg(long)]
    version: Option<String>,
    /// The tool's WIT source: docs come from it (and are kept).
    #[arg(long, value_name = "DIR")]
    wit: Option<PathBuf>,
    /// The tenant that owns the tool (default: `_`, single-tenant).
    #[arg(long, default_value = "_", value_parser = TenantId::parse)]
    tenant: TenantId,
    /// Store the version without pointing the name at it.
    #[arg(long)]
    no_deploy: bool,
    /// Print the registration as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    compile: super::compile::CompileArgs,
    #[command(flatten)]
    data: DataDir,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The tenant's tools and their current versions.
    List {
        #[arg(long, default_value = "_", value_parser = TenantId::existing)]
        tenant: TenantId,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataDir,
    },
    /// A tool's versions and functions.
    Describe {
        name: String,
        #[arg(long, default_value = "_", value_parser = TenantId::existing)]
        tenant: TenantId,
        #[command(flatten)]
        data: DataDir,
    },
    /// Point a tool at one of its versions (deploy or roll back).
    Deploy {
        name: String,
        version: String,
        #[arg(long, default_value = "_", value_parser = TenantId::existing)]
        tenant: TenantId,
        #[command(flatten)]
        data: DataDir,
    },
    /// Stop a tool from being invoked (it stays registered).
    Disable {
        name: String,
        #[arg(long, default_value = "_", value_parser = TenantId::existing)]
        tenant: TenantId,
        #[command(flatten)]
        data: DataDir,
    },
    /// Allow a disabled tool again.
    Enable {
        name: String,
        #[arg(long, default_value = "_", value_parser = TenantId::existing)]
        tenant: TenantId,
        #[command(flatten)]
        data: DataDir,
    },
}

async fn registry(data: &DataDir) -> toolhost::Result<Registry> {
    super::registry(
        data,
        data.storage().await?,
        super::runtime()?,
        Default::default(),
    )
}

pub async fn register(args: RegisterArgs) -> i32 {
    let result = async {
        let bytes = std::fs::read(&args.component).map_err(|e| {
            toolhost::Error::invalid_component(format!(
                "cannot read {}: {e}",
                args.component.display()
            ))
        })?;
        let size = bytes.len();
        let registry = super::registry(
            &args.data,
            args.data.storage().await?,
            super::runtime()?,
            args.compile.limits(1)?,
        )?;
        let name = args.name.clone();
        let progress = move |elapsed: std::time::Duration| {
            eprint!(
                "\rcompiling {name} ({:.1} MB)… {:.1}s",
                size as f64 / 1e6,
                elapsed.as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        };
        let upload = toolhost::registry::Upload {
            tenant: &args.tenant,
            name: &args.name,
            version: args.version.as_deref(),
            bytes,
            wit: args.wit.as_deref(),
            deploy: !args.no_deploy,
        };
        let r = registry.register(upload, &progress).await;
        if r.as_ref().is_ok_and(|r| r.compile_ms >= 500) {
            eprintln!();
        }
        r
    }
    .await;
    match result {
        Ok(r) => {
            if args.json {
                out!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                out!(
                    "{} {}@{} (sha256:{}), {} function{}{}",
                    if r.created {
                        "registered"
                    } else {
                        "already registered"
                    },
                    r.name,
                    r.version,
                    &r.digest[..12],
                    r.functions.len(),
                    if r.functions.len() == 1 { "" } else { "s" },
                    if r.deployed { ", deployed" } else { "" }
                );
            }
            0
        }
        Err(e) => {
            if args.json {
                out!("{}", serde_json::json!({"ok": false, "error": e}));
            }
            super::report(&e);
            1
        }
    }
}

pub async fn main(cmd: Command) -> i32 {
    let result: toolhost::Result<()> = async {
        match cmd {
            Command::List { tenant, json, data } => {
                let tools = registry(&data).await?.list(&tenant).await?;
                if json {
                    let list: Vec<_> = tools
                        .iter()
                        .map(|(e, v)| serde_json::json!({"tool": e, "current": v}))
                        .collect();
                    out!("{}", serde_json::Value::Array(list));
                } else {
                    for (e, v) in &tools {
                        let functions = v.as_ref().map_or(0, |v| v.functions.len());
                        out!(
                            "{}@{}{}  {functions} functions",
                            e.name,
                            e.current,
                            if e.disabled { " (disabled)" } else { "" }
                        );
                    }
                }
            }
            Command::Describe { name, tenant, data } => {
                let (entry, versions) = registry(&data).await?.describe(&tenant, &name).await?;
                out!(
                    "{}{}",
                    entry.name,
                    if entry.disabled { " (disabled)" } else { "" }
                );
                for v in versions {
                    let mark = if v.version == entry.current { "*" } else { " " };
                    out!("{mark} {} sha256:{}", v.version, v.digest);
                    for f in &v.functions {
                        out!("      {f}");
                    }
                }
            }
            Command::Deploy {
                name,
                version,
                tenant,
                data,
            } => {
                registry(&data)
                    .await?
                    .deploy(&tenant, &name, &version)
                    .await?;
                out!("{name} now points at {version}");
            }
            Command::Disable { name, tenant, data } => {
                registry(&data)
                    .await?
                    .set_disabled(&tenant, &name, true)
                    .await?;
                out!("{name} disabled");
            }
            Command::Enable { name, tenant, data } => {
                registry(&data)
                    .await?
                    .set_disabled(&tenant, &name, false)
                    .await?;
                out!("{name} enabled");
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            super::report(&e);
            1
        }
    }
}
