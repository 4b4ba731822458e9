//! The `host` binary: the command line edge of Toolhost.

mod cli;

#[tokio::main]
async fn main() {
    let code = cli::main().await;
    std::process::exit(code);
}
