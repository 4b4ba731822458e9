//! The `host` command line. A contract: scripts depend on its flags, its
//! stdout and its exit codes (0 success, 1 the invocation or command failed,
//! 2 bad usage).

/// `println!` for a command's output: when what reads it stops reading
/// (`host tools list | head -1`, a closed pipe), the command ends quietly
/// with status 141, as a Unix tool the signal stops, instead of panicking
/// (Rust ignores `SIGPIPE`, so `println!` would). Every command's printed
/// lines go through it (or [`out_str`]); `audit export` streams to its
/// writer and reports a failed write as an error.
macro_rules! out {
    () => {
        $crate::cli::out_str("\n")
    };
    ($($arg:tt)*) => {
        $crate::cli::out_str(&format!("{}\n", format_args!($($arg)*)))
    };
}

mod approvals;
mod audit;
mod budget;
mod compile;
mod data;
mod docs;
mod inspect;
mod keys;
mod mcp;
mod policy;
mod run;
mod serve;
mod stats;
mod tools;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Toolhost: run WebAssembly tools for AI agents under hard limits.
#[derive(Debug, Parser)]
#[command(name = "host", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List a component's functions with descriptions and JSON Schemas.
    Inspect(inspect::Args),
    /// Run one function of a component once, under limits.
    Run(Box<run::Args>),
    /// Work with a tool's WIT docs.
    #[command(subcommand)]
    Docs(docs::Command),
    /// Register a component as a versioned tool in the data dir.
    Register(Box<tools::RegisterArgs>),
    /// List, describe, deploy, disable and enable registered tools.
    #[command(subcommand)]
    Tools(tools::Command),
    /// Verify, export and prune the tamper-evident audit trail.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Report model tokens against a task; show budget ledgers.
    #[command(subcommand)]
    Budget(budget::Command),
    /// Serve the HTTP API (tools, invocations, budgets) for orchestrators.
    Serve(Box<serve::Args>),
    /// Speak MCP over stdin/stdout for one tenant (for desktop clients
    /// that launch a local server).
    Mcp(Box<mcp::Args>),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Check, store and show the data dir's policy.
    #[command(subcommand)]
    Policy(policy::Command),
    /// List, approve and deny calls waiting for a human.
    #[command(subcommand)]
    Approvals(approvals::Command),
    /// The compile child (internal).
    #[command(name = "__compile", hide = true)]
    Compile(compile::Args),
    /// Reports: per tool and function the count, failure rate, p50/p95/p99
    /// latency and cost; per task the cost, tokens and calls.
    Stats(Box<stats::Args>),
}

/// Options shared by commands that load a component.
#[derive(Debug, clap::Args)]
pub struct ComponentArgs {
    /// The component (`.wasm`, built for wasm32-wasip2).
    pub component: PathBuf,
    /// The tool's WIT source directory: docs are taken from it, and the
    /// component must match it.
    #[arg(long, value_name = "DIR")]
    pub wit: Option<PathBuf>,
}

impl ComponentArgs {
    pub fn load_options(&self) -> toolhost::LoadOptions {
        toolhost::LoadOptions {
            wit: self.wit.clone(),
            docs: None,
        }
    }
}

/// Run the command line; returns the process exit code.
pub async fn main() -> i32 {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Inspect(_) | Command::Docs(_)) {
        stop_on_closed_stdout();
    }
    match cli.command {
        Command::Inspect(args) => inspect::main(args),
        Command::Run(args) => run::main(*args).await,
        Command::Docs(cmd) => docs::main(cmd),
        Command::Register(args) => tools::register(*args).await,
        Command::Tools(cmd) => tools::main(cmd).await,
        Command::Audit(cmd) => audit::main(cmd).await,
        Command::Budget(cmd) => budget::main(cmd).await,
        Command::Serve(args) => serve::main(*args).await,
        Command::Mcp(args) => mcp::main(*args).await,
        Command::Keys(cmd) => keys::main(cmd).await,
        Command::Policy(cmd) => policy::main(cmd).await,
        Command::Approvals(cmd) => approvals::main(cmd).await,
        Command::Compile(args) => compile::main(args),
        Command::Stats(args) => stats::main(*args).await,
    }
}

/// A command that only reads files and prints ends quietly when what reads
/// its output stops reading (`host inspect x.wasm | head`), as a Unix tool
/// does: the default `SIGPIPE` action, not Rust's ignored one that turns the
/// next `println!` into a panic. Only for such commands: one that writes to
/// a child's pipe (compiling) or a socket (a database over a Unix socket)
/// must get the write's error, not die of the signal.
fn stop_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any
    // other thread of this process writes to a pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Write `text` to stdout: see [`out!`]. Any other failure to write (a full
/// disk behind a redirect) ends the command with status 1, saying so.
pub fn out_str(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// A runtime sized for one-shot CLI use.
pub fn runtime() -> Result<std::sync::Arc<toolhost::Runtime>, toolhost::Error> {
    let config = toolhost::RuntimeConfig {
        max_instances: 4,
        ..Default::default()
    };
    toolhost::Runtime::new(&config).map(std::sync::Arc::new)
}

/// The registry over a data dir: components compile in a bounded child
/// process (`limits`); artifacts are kept in `<data dir>/artifacts`.
pub fn registry(
    data: &data::DataDir,
    storage: std::sync::Arc<dyn toolhost::storage::Storage>,
    runtime: std::sync::Arc<toolhost::Runtime>,
    limits: toolhost::registry::CompileLimits,
) -> toolhost::Result<toolhost::registry::Registry> {
    toolhost::registry::Registry::with_options(storage, runtime, registry_options(data, limits)?)
}

/// How `host` commands compile and keep artifacts for a data dir.
pub fn registry_options(
    data: &data::DataDir,
    limits: toolhost::registry::CompileLimits,
) -> toolhost::Result<toolhost::registry::RegistryOptions> {
    Ok(toolhost::registry::RegistryOptions {
        compiler: toolhost::registry::Compiler::subprocess(limits)?,
        artifact_dir: Some(data.path().join("artifacts")),
        ..Default::default()
    })
}

/// A command's exit code: its own on success; on error, the error reported
/// and 2 for bad usage (invalid arguments), else 1.
pub fn exit_code(result: toolhost::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            if e.kind == toolhost::ErrorKind::InvalidArgs {
                2
            } else {
                1
            }
        }
    }
}

/// Print an error the standard way: `error[kind]: message` on stderr.
pub fn report(e: &toolhost::Error) {
    eprintln!("error[{}]: {}", e.kind, e.message);
}
