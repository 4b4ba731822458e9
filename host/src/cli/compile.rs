//! `host __compile` (hidden): the compile child of `registry::compile`.
//! Reads a component on stdin, writes its artifact on stdout; its parent
//! sets its limits.

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
