//! The `host` binary: the command line edge of Toolhost.

mod cli;

/// glibc's allocator spent ~15% of the request threads' time under load
/// (measured with `perf` at 64 concurrent invocations); mimalloc's per-thread
/// heaps do not contend.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let code = cli::main().await;
    std::process::exit(code);
}
