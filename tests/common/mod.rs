//! Test harness: builds the real guest components in `guest-examples/` once
//! per test binary (plain `cargo build --release --target wasm32-wasip2`, as
//! a tool author would) and shares one runtime.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use toolhost::gate::SandboxOnly;
use toolhost::{Host, LoadOptions, Runtime, RuntimeConfig, Tool};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Build every guest example once; return the directory holding the `.wasm` files.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root().join("guest-examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"]);
        // Do not leak the outer build's settings into the guest build.
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_") && key != "CARGO_HOME" || key == "RUSTFLAGS" {
                cmd.env_remove(key);
            }
        }
        let status = cmd.status().expect("running cargo to build guest-examples");
        assert!(
            status.success(),
            "building guest-examples failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
        root.join("target/wasm32-wasip2/release")
    })
}

/// The path of a built guest component, by crate name (`text-tools`).
pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Arc::new(Runtime::new(&RuntimeConfig::default()).expect("runtime")))
        .clone()
}

/// Load (compile) a guest once per test binary.
pub fn tool(name: &str) -> Arc<Tool> {
    static TOOLS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Tool>>>> =
        OnceLock::new();
    let tools = TOOLS.get_or_init(Default::default);
    if let Some(t) = tools.lock().unwrap().get(name) {
        return t.clone();
    }
    let t = Arc::new(
        runtime()
            .load_file(&guest(name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("loading {name}: {e}")),
    );
    tools.lock().unwrap().insert(name.to_string(), t.clone());
    t
}

/// A host with the sandbox-only gate.
pub fn host() -> Host {
    Host::new(runtime(), Arc::new(SandboxOnly))
}

pub fn call(function: &str, args: serde_json::Value) -> toolhost::Call {
    toolhost::Call {
        function: function.into(),
        args,
        limits: toolhost::Limits::default(),
        context: Default::default(),
    }
}
