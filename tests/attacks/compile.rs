//! Compiling uploads is bounded (issue 10, item 6) and artifacts are this
//! node's own (issue 11, item 5):
//!
//! * a component that is slow or memory-hungry to compile is refused with
//!   422 naming the limit, while the server keeps serving other requests;
//! * a structural check refuses, before compiling, what no real tool has;
//! * an artifact planted in the database is never loaded;
//! * the loaded-tool cache is bounded.
//!
//! Hostile modules are crafted here with `wasm-encoder` and appended, as an
//! extra core module, to a real guest component (wasmtime compiles every
//! module of a component, instantiated or not).

use crate::common::serve::{Client, Server, data_dir, host, key, ok, s};
use crate::common::{guest, tempdir};
use serde_json::json;
use std::sync::Arc;
use toolhost::ErrorKind;
use toolhost::ids::TenantId;
use toolhost::registry::{Registry, StructureLimits, Upload};
use toolhost::storage::Storage;
use toolhost::storage::memory::MemoryStorage;
use wasm_encoder::{
    BlockType, CodeSection, Function, FunctionSection, Instruction as I, Module, TypeSection,
    ValType,
};

/// A core module of `() -> ()` functions.
fn core_module(functions: &[Function]) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut decls = FunctionSection::new();
    let mut code = CodeSection::new();
    for f in functions {
        decls.function(0);
        code.function(f);
    }
    let mut m = Module::new();
    m.section(&types).section(&decls).section(&code);
    m.finish()
}

/// A function with `locals` i64 locals and `body`.
fn function(locals: u32, body: impl FnOnce(&mut Function)) -> Function {
    let mut f = Function::new([(locals, ValType::I64)]);
    body(&mut f);
    f.instruction(&I::End);
    f
}

/// The crafted shape that makes the compiler's work explode: `depth`
/// nested loops and, innermost, every one of `locals` locals changed, so
/// that each loop header needs a value for each local (locals × depth).
/// ~10 KB for 1000 × 100, seconds and hundreds of MB to compile.
fn phi_storm(locals: u32, depth: u32) -> Function {
    function(locals, |f| {
        for _ in 0..depth {
            f.instruction(&I::Loop(BlockType::Empty));
        }
        for i in 0..locals {
            f.instruction(&I::LocalGet(i))
                .instruction(&I::I64Const(1))
                .instruction(&I::I64Add)
                .instruction(&I::LocalSet(i));
        }
        for d in 0..depth {
            f.instruction(&I::LocalGet(d % locals))
                .instruction(&I::I32WrapI64)
                .instruction(&I::BrIf(0))
                .instruction(&I::End);
        }
    })
}

/// A real component (text-tools) with `module` appended as an extra core
/// module: it passes every check that reads the component's interface.
fn with_module(module: &[u8]) -> Vec<u8> {
    let mut bytes = std::fs::read(guest("text-tools")).unwrap();
    bytes.push(1); // core module section
    let mut n = module.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(module);
    bytes
}

/// Expensive to compile (tens of seconds and GBs of CPU and memory in all)
/// yet within every structural limit: only the compile child's limits stop
/// it.
fn expensive_component() -> Vec<u8> {
    let functions: Vec<Function> = (0..32).map(|_| phi_storm(1000, 100)).collect();
    with_module(&core_module(&functions))
}

/// The `host __compile` child of process `parent`, if one runs.
fn compile_child(parent: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if fields.get(1) == Some(&parent.to_string().as_str())
            && fields.first() != Some(&"Z")
            && String::from_utf8_lossy(&cmdline).contains("__compile")
        {
            return Some(pid);
        }
    }
    None
}

async fn wait_for_compile_child(parent: u32) -> u32 {
    for _ in 0..1500 {
        if let Some(pid) = compile_child(parent) {
            return pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the server never started a compile child");
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

#[tokio::test]
async fn a_slow_compile_is_refused_at_its_time_limit_while_the_server_keeps_serving() {
    let dir = data_dir("attack-compile-slow", &[("text-tools", "text_tools")]);
    let admin = key(&dir, "acme", &["admin"]);
    let caller = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &["--compile-timeout", "3s"]);
    let uploader = Client::new(&server, Some(&admin));
    let upload = tokio::spawn(async move {
        uploader
            .post_raw(
                "/v1/tools?name=slow",
                expensive_component(),
                "application/wasm",
            )
            .await
    });
    let compiler = wait_for_compile_child(server.child.id()).await;
    // While it compiles, the server answers.
    let c = Client::new(&server, Some(&caller));
    let (status, _) = c.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, r) = c
        .post(
            "/v1/tools/text-tools/word-count/invoke",
            json!({"args": {"text": "a b a"}}),
        )
        .await;
    assert_eq!((status, &r["result"]["words"]), (200, &json!(3)), "{r}");
    assert!(
        running(compiler),
        "the requests above were answered while the compiler ran"
    );
    let (status, problem) = upload.await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["kind"], "invalid_component");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("compiling took longer than the 3 s limit"),
        "{problem}"
    );
    assert!(!running(compiler), "the compiler was stopped");
    let admin = Client::new(&server, Some(&admin));
    let (status, _) = admin.get("/v1/tools/slow").await;
    assert_eq!(status, 404, "nothing was stored");
    server.stop();
}

#[tokio::test]
async fn a_memory_hungry_compile_is_refused_at_its_memory_limit() {
    let dir = data_dir("attack-compile-memory", &[]);
    let admin = key(&dir, "acme", &["admin"]);
    let server = Server::start(&dir, &["--compile-memory", "320MiB"]);
    let c = Client::new(&server, Some(&admin));
    let (status, problem) = c
        .post_raw(
            "/v1/tools?name=hungry",
            expensive_component(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["kind"], "invalid_component");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("compiling needed more than the 320 MiB compile memory limit"),
        "{problem}"
    );
    // A real tool still compiles under the same limit.
    let text_tools = std::fs::read(guest("text-tools")).unwrap();
    let (status, r) = c
        .post_raw("/v1/tools?name=text-tools", text_tools, "application/wasm")
        .await;
    assert_eq!(status, 201, "{r}");
    server.stop();
}

/// Register `bytes` with the library (in-process compiler, default
/// structural limits).
async fn register(bytes: Vec<u8>) -> toolhost::Result<toolhost::registry::Registration> {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let registry = Registry::new(storage, crate::common::runtime());
    let upload = Upload {
        tenant: &TenantId::from("_"),
        name: "crafted",
        version: None,
        bytes,
        wit: None,
        deploy: true,
    };
    registry.register(upload, &|_| {}).await
}

async fn refused(bytes: Vec<u8>, names: &str) {
    let e = register(bytes).await.expect_err("refused");
    assert_eq!(e.kind, ErrorKind::InvalidComponent, "{e}");
    assert!(
        e.message.contains(names) && e.message.contains("refused before compiling"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_structural_check_refuses_what_no_real_tool_has_before_compiling() {
    let limits = StructureLimits::default();
    // Too many functions in one module.
    let empty = function(0, |_| {});
    let many = vec![empty; limits.max_functions as usize + 1];
    refused(
        with_module(&core_module(&many)),
        &format!("the limit is {}", limits.max_functions),
    )
    .await;
    // One huge function body.
    let huge = function(0, |f| {
        for _ in 0..=limits.max_function_bytes {
            f.instruction(&I::Nop);
        }
    });
    refused(
        with_module(&core_module(&[huge])),
        "the limit for one function is 2 MiB",
    )
    .await;
    // Too many locals.
    let locals = function(limits.max_locals as u32 + 1, |_| {});
    refused(
        with_module(&core_module(&[locals])),
        &format!("more than {} locals", limits.max_locals),
    )
    .await;
    // Blocks nested too deep.
    let deep = function(0, |f| {
        for _ in 0..=limits.max_nesting {
            f.instruction(&I::Block(BlockType::Empty));
        }
        for _ in 0..=limits.max_nesting {
            f.instruction(&I::End);
        }
    });
    refused(
        with_module(&core_module(&[deep])),
        &format!("more than {} deep", limits.max_nesting),
    )
    .await;
    // A giant br_table.
    let table = function(0, |f| {
        f.instruction(&I::Block(BlockType::Empty))
            .instruction(&I::I32Const(0));
        let targets = vec![0u32; limits.max_br_table as usize + 1];
        f.instruction(&I::BrTable(targets.into(), 0))
            .instruction(&I::End);
    });
    refused(
        with_module(&core_module(&[table])),
        &format!("the limit is {}", limits.max_br_table),
    )
    .await;
    // Many locals live across deep nesting: the compiler's work is their
    // product.
    refused(
        with_module(&core_module(&[phi_storm(10_000, 1_000)])),
        &format!("the limit is {}", limits.max_locals_times_nesting),
    )
    .await;
    // Too many core modules.
    let mut bytes = std::fs::read(guest("text-tools")).unwrap();
    let tiny = core_module(&[]);
    for _ in 0..=limits.max_modules {
        bytes.push(1);
        bytes.push(tiny.len() as u8);
        bytes.extend_from_slice(&tiny);
    }
    refused(
        bytes,
        &format!("more than {} core modules", limits.max_modules),
    )
    .await;
    // Within every limit, the same kind of extra module is accepted.
    let fine = with_module(&core_module(&[phi_storm(50, 20)]));
    register(fine).await.unwrap();
}

#[tokio::test]
async fn the_api_refuses_a_component_over_a_structural_limit_with_422() {
    let dir = data_dir("attack-compile-structure", &[]);
    let admin = key(&dir, "acme", &["admin"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&admin));
    let crafted = with_module(&core_module(&[phi_storm(10_000, 1_000)]));
    let (status, problem) = c
        .post_raw("/v1/tools?name=crafted", crafted, "application/wasm")
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["kind"], "invalid_component");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("refused before compiling"),
        "{problem}"
    );
    assert!(
        compile_child(server.child.id()).is_none(),
        "no compiler was started"
    );
    server.stop();
}

#[tokio::test]
async fn an_artifact_planted_in_the_database_is_never_loaded() {
    let dir = data_dir("attack-planted-artifact", &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["invoke"]);
    // Whoever can write the database plants native code: another
    // component's artifact, valid for this engine, as text-tools' artifact
    // (what a host that trusted the database would load), and garbage as
    // every other blob.
    let runtime = crate::common::runtime();
    let planted = runtime
        .precompile(&std::fs::read(guest("types")).unwrap())
        .unwrap();
    let planted_digest = "ab".repeat(32);
    {
        let c = rusqlite::Connection::open(dir.join("toolhost.db")).unwrap();
        let text_tools = c
            .query_row("SELECT digest FROM tool_versions", [], |r| {
                r.get::<_, String>(0)
            })
            .unwrap();
        c.execute(
            "UPDATE blobs SET bytes = X'00C0FFEE' WHERE digest <> ?1",
            [&text_tools],
        )
        .unwrap();
        c.execute(
            "INSERT INTO blobs (digest, bytes) VALUES (?1, ?2)",
            rusqlite::params![planted_digest, planted],
        )
        .unwrap();
        c.execute(
            "UPDATE tool_versions SET artifact = ?1, engine = ?2",
            [&planted_digest, &runtime.compatibility()],
        )
        .unwrap();
    }
    // A node that has not compiled text-tools itself.
    let _ = std::fs::remove_dir_all(dir.join("artifacts"));
    let call = json!({"args": {"text": "a b a"}});
    let server = Server::start(&dir, &[]);
    let (status, r) = Client::new(&server, Some(&k))
        .post("/v1/tools/text-tools/word-count/invoke", call.clone())
        .await;
    assert_eq!((status, &r["result"]["words"]), (200, &json!(3)), "{r}");
    let log = server.log();
    assert!(log.contains("precompiled=false"), "compiled here: {log}");
    server.stop();
    // And kept: a restart does not compile again.
    let server = Server::start(&dir, &[]);
    let (status, r) = Client::new(&server, Some(&k))
        .post("/v1/tools/text-tools/word-count/invoke", call)
        .await;
    assert_eq!((status, &r["result"]["words"]), (200, &json!(3)), "{r}");
    let log = server.log();
    assert!(log.contains("precompiled=true"), "{log}");
    assert!(!log.contains("precompiled=false"), "{log}");
    server.stop();
}

#[test]
fn artifacts_are_private_to_the_hosts_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("attack-artifact-modes");
    ok(host(&[
        "register",
        s(&guest("text-tools")),
        "--name",
        "text-tools",
        "--data-dir",
        s(&dir),
    ]));
    let root = dir.join("artifacts");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    let engines: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
    assert_eq!(engines.len(), 1);
    assert_eq!(mode(&engines[0].path()), 0o700);
    let files: Vec<_> = std::fs::read_dir(engines[0].path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].file_name().to_string_lossy().ends_with(".cwasm"));
    assert_eq!(mode(&files[0].path()), 0o600);
}

#[tokio::test]
async fn the_loaded_tool_cache_is_bounded() {
    let dir = data_dir(
        "attack-loaded-tools",
        &[("text-tools", "text_tools"), ("types", "types")],
    );
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &["--max-loaded-tools", "1"]);
    let c = Client::new(&server, Some(&k));
    for _ in 0..2 {
        let (status, r) = c
            .post(
                "/v1/tools/text-tools/word-count/invoke",
                json!({"args": {"text": "a b"}}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        let (status, r) = c
            .post("/v1/tools/types/echo-u8/invoke", json!({"args": {"v": 7}}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    // Each use of one evicted the other: four loads, not two.
    let loads = server.log().matches("tool loaded").count();
    assert_eq!(loads, 4, "{}", server.log());
    server.stop();
}

#[tokio::test]
async fn concurrent_first_calls_share_one_load() {
    let dir = data_dir("attack-coalesced-load", &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = Client::new(&server, Some(&k));
            tokio::spawn(async move {
                c.post(
                    "/v1/tools/text-tools/word-count/invoke",
                    json!({"args": {"text": "a"}}),
                )
                .await
                .0
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(server.log().matches("tool loaded").count(), 1);
    server.stop();
}
