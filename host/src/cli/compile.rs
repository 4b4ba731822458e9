//! `host __compile` (hidden): the compile child of `registry::compile`.
//! Reads a component on stdin, writes its artifact on stdout; its parent
//! sets its limits. Also the compile-limit flags of `host serve` and `host
//! register`.

use toolhost::limits::{parse_bytes, parse_duration};
use toolhost::registry::CompileLimits;

/// How components are compiled (in a child process, bounded).
#[derive(Debug, Clone, clap::Args)]
pub struct CompileArgs {
    /// Wall-clock limit for compiling one component, in a child process
    /// (its CPU time: this × the cores).
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    compile_timeout: String,
    /// Address-space limit of the compile child.
    #[arg(long, default_value = "2GiB", value_name = "SIZE")]
    compile_memory: String,
}

impl CompileArgs {
    /// The limits, for at most `jobs` compiles at once.
    pub fn limits(&self, jobs: usize) -> toolhost::Result<CompileLimits> {
        let bad = |flag: &str, e: String| toolhost::Error::invalid_args(format!("--{flag}: {e}"));
        Ok(CompileLimits {
            timeout: parse_duration(&self.compile_timeout)
                .map_err(|e| bad("compile-timeout", e))?,
            memory: parse_bytes(&self.compile_memory).map_err(|e| bad("compile-memory", e))?,
            jobs: jobs.max(1),
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The runtime's wasm stack cap (the artifact depends on it).
    #[arg(long)]
    max_wasm_stack: usize,
}

pub fn main(args: Args) -> i32 {
    let config = toolhost::RuntimeConfig {
        max_wasm_stack: args.max_wasm_stack,
        ..Default::default()
    };
    toolhost::registry::compile::child_main(&config)
}
