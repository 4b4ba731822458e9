//! The tool registry: validated, content-addressed, immutable versions that
//! load after a restart without recompiling.

mod common;

use common::{guest, tempdir};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use toolhost::gate::SandboxOnly;
use toolhost::ids::TenantId;
use toolhost::registry::{Registry, RegistryOptions, Upload};
use toolhost::storage::prelude::*;
use toolhost::storage::sqlite::SqliteStorage;
use toolhost::{Call, ErrorKind, Host, Runtime, RuntimeConfig};

async fn open(dir: &Path) -> (Registry, Arc<dyn Storage>, Arc<Runtime>) {
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir).await.unwrap());
    // A fresh runtime each time: what a restarted process has.
    let runtime = Arc::new(Runtime::new(&RuntimeConfig::default()).unwrap());
    let options = RegistryOptions {
        artifact_dir: Some(dir.join("artifacts")),
        ..Default::default()
    };
    (
        Registry::with_options(storage.clone(), runtime.clone(), options).unwrap(),
        storage,
        runtime,
    )
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

/// Register through the library, with no progress output.
async fn reg(
    registry: &Registry,
    tenant: &str,
    name: &str,
    version: Option<&str>,
    bytes: Vec<u8>,
    wit: Option<&Path>,
    deploy: bool,
) -> toolhost::Result<toolhost::registry::Registration> {
    let upload = Upload {
        tenant: &TenantId::from(tenant),
        name,
        version,
        bytes,
        wit,
        deploy,
    };
    registry.register(upload, &|_| {}).await
}

#[tokio::test(flavor = "multi_thread")]
async fn registered_tools_survive_a_restart_without_recompiling() {
    let dir = tempdir("registry");
    {
        let (registry, _, _) = open(&dir).await;
        let wit = common::repo_root().join("guest-examples/refund/wit");
        let r = reg(
            &registry,
            "acme",
            "refund",
            None,
            bytes("refund"),
            Some(wit.as_path()),
            true,
        )
        .await
        .unwrap();
        assert!(r.created && r.deployed);
        assert_eq!(r.version, "1");
        assert_eq!(r.digest.len(), 64);
        assert_eq!(
            r.functions[0],
            "lookup-order(order-id: string) -> result<order, string>"
        );
    }
    let (registry, _, runtime) = open(&dir).await;
    let loaded = registry
        .load(&TenantId::from("acme"), "refund")
        .await
        .unwrap();
    assert!(
        loaded.from_artifact,
        "a restart loads the precompiled artifact"
    );
    // The docs given at registration are kept.
    let (f, _) = loaded.tool.function("lookup-order").unwrap();
    assert_eq!(
        f.docs.as_deref().map(str::trim),
        Some("Look an order up by its id.")
    );
    let host = Host::new(runtime, Arc::new(SandboxOnly));
    let out = host
        .invoke(
            &loaded.tool,
            &Call {
                function: "lookup-order".into(),
                args: json!({"order-id": "ord_1001"}),
                limits: Default::default(),
                context: Default::default(),
            },
        )
        .await;
    assert_eq!(out.result.unwrap()["ok"]["id"], "ord_1001");
    // Tenants do not see each other's tools.
    let other = registry
        .load(&TenantId::from("globex"), "refund")
        .await
        .err()
        .unwrap();
    assert_eq!(other.kind, ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_are_immutable_and_names_deploy_and_roll_back() {
    let dir = tempdir("registry");
    let (registry, _, _) = open(&dir).await;
    let v1 = reg(&registry, "_", "t", None, bytes("refund"), None, true)
        .await
        .unwrap();
    let again = reg(&registry, "_", "t", None, bytes("refund"), None, true)
        .await
        .unwrap();
    assert_eq!(
        (again.version.as_str(), again.created),
        ("1", false),
        "same bytes, same version"
    );
    let conflict = reg(
        &registry,
        "_",
        "t",
        Some("1"),
        bytes("text-tools"),
        None,
        true,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(conflict.kind, ErrorKind::Conflict);
    assert!(conflict.message.contains(&v1.digest));
    let v2 = reg(&registry, "_", "t", None, bytes("text-tools"), None, true)
        .await
        .unwrap();
    assert_eq!(v2.version, "2");
    assert!(
        registry
            .load(&TenantId::from("_"), "t")
            .await
            .unwrap()
            .tool
            .function("hello")
            .is_ok()
    );
    registry
        .deploy(&TenantId::from("_"), "t", "1")
        .await
        .unwrap();
    assert!(
        registry
            .load(&TenantId::from("_"), "t")
            .await
            .unwrap()
            .tool
            .function("lookup-order")
            .is_ok()
    );
    assert_eq!(
        registry
            .deploy(&TenantId::from("_"), "t", "9")
            .await
            .err()
            .unwrap()
            .kind,
        ErrorKind::NotFound
    );
    // Registering without deploying leaves the pointer alone.
    let v3 = reg(
        &registry,
        "_",
        "t",
        Some("3.0"),
        bytes("types"),
        None,
        false,
    )
    .await
    .unwrap();
    assert!(!v3.deployed);
    assert_eq!(
        registry
            .describe(&TenantId::from("_"), "t")
            .await
            .unwrap()
            .0
            .current,
        "1"
    );
    assert_eq!(
        registry
            .describe(&TenantId::from("_"), "t")
            .await
            .unwrap()
            .1
            .len(),
        3
    );
    // Disabled tools do not load.
    registry
        .set_disabled(&TenantId::from("_"), "t", true)
        .await
        .unwrap();
    assert_eq!(
        registry
            .load(&TenantId::from("_"), "t")
            .await
            .err()
            .unwrap()
            .kind,
        ErrorKind::ToolDisabled
    );
    registry
        .set_disabled(&TenantId::from("_"), "t", false)
        .await
        .unwrap();
    assert!(registry.load(&TenantId::from("_"), "t").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_and_leave_stored_state_untouched() {
    let dir = tempdir("registry");
    let (registry, storage, _) = open(&dir).await;
    reg(
        &registry,
        "_",
        "good",
        None,
        bytes("text-tools"),
        None,
        true,
    )
    .await
    .unwrap();
    let before = (
        storage.tool_list(&TenantId::from("_")).await.unwrap(),
        storage
            .tool_versions(&TenantId::from("_"), "good")
            .await
            .unwrap(),
    );
    let cases: Vec<(&str, Vec<u8>, ErrorKind)> = vec![
        (
            "good",
            b"not wasm at all".to_vec(),
            ErrorKind::InvalidComponent,
        ),
        ("good", bytes("bad-import"), ErrorKind::InvalidComponent),
        (
            "good",
            bytes("resource-export"),
            ErrorKind::InvalidComponent,
        ),
        (
            "good",
            bytes("refund")[..1000].to_vec(),
            ErrorKind::InvalidComponent,
        ),
        ("bad name!", bytes("refund"), ErrorKind::InvalidArgs),
        ("x__y", bytes("refund"), ErrorKind::InvalidArgs),
    ];
    for (name, b, kind) in cases {
        let err = reg(&registry, "_", name, None, b, None, true)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, kind, "{name}: {}", err.message);
    }
    let bad_version = reg(
        &registry,
        "_",
        "good",
        Some("../1"),
        bytes("refund"),
        None,
        true,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(bad_version.kind, ErrorKind::InvalidArgs);
    let after = (
        storage.tool_list(&TenantId::from("_")).await.unwrap(),
        storage
            .tool_versions(&TenantId::from("_"), "good")
            .await
            .unwrap(),
    );
    assert_eq!(before, after);
    assert!(registry.load(&TenantId::from("_"), "good").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_the_artifact_compiles_once_and_keeps_it() {
    let dir = tempdir("registry");
    {
        let (registry, _, _) = open(&dir).await;
        reg(&registry, "_", "t", None, bytes("text-tools"), None, true)
            .await
            .unwrap();
    }
    // Another node (or this one after its cache was cleared, or with
    // another engine) has only the database.
    std::fs::remove_dir_all(dir.join("artifacts")).unwrap();
    let (registry, _, _) = open(&dir).await;
    let first = registry.load(&TenantId::from("_"), "t").await.unwrap();
    assert!(!first.from_artifact, "compiled on this node");
    let second = registry.load(&TenantId::from("_"), "t").await.unwrap();
    assert!(second.from_artifact, "and kept");
}

#[test]
fn the_cli_registers_lists_and_describes() {
    let dir = tempdir("registry-cli");
    let d = dir.display().to_string();
    let host = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_host"))
            .args(args)
            .output()
            .unwrap()
    };
    let succeeded = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let refund = guest("refund").display().to_string();
    let out = host(&[
        "register",
        &refund,
        "--name",
        "refund",
        "--data-dir",
        &d,
        "--json",
    ]);
    succeeded(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["name"].as_str(), r["version"].as_str()),
        (Some("refund"), Some("1"))
    );
    let out = host(&["tools", "list", "--data-dir", &d, "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["tool"]["name"], "refund");
    assert_eq!(list[0]["current"]["functions"].as_array().unwrap().len(), 3);
    let out = host(&["tools", "describe", "refund", "--data-dir", &d]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("* 1 sha256:"));
    let out = host(&["tools", "disable", "nope", "--data-dir", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[not_found]"));
    // Data is made only under tenant names that are checked; what is stored
    // stays reachable by any name (names were not checked before).
    let out = host(&[
        "register",
        &refund,
        "--name",
        "refund",
        "--tenant",
        "Acme Corp",
        "--data-dir",
        &d,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tenant `Acme Corp`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = host(&[
        "tools",
        "list",
        "--tenant",
        "Acme Corp",
        "--data-dir",
        &d,
        "--json",
    ]);
    succeeded(&out);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

/// A file in the artifact cache that the cache could not have written
/// (writable by others, or a symlink, even to a valid artifact) is native
/// code someone else may have put there: it is never loaded; the component
/// is compiled again and the cache holds the host's own file after.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_the_cache_did_not_write_is_never_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("registry-artifact-owner");
    {
        let (registry, _, _) = open(&dir).await;
        reg(&registry, "_", "t", None, bytes("text-tools"), None, true)
            .await
            .unwrap();
    }
    let artifact = || {
        let engines = std::fs::read_dir(dir.join("artifacts")).unwrap();
        let files: Vec<_> = engines
            .flatten()
            .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten())
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    };
    let path = artifact();
    let load = || async {
        let (registry, _, _) = open(&dir).await;
        registry.load(&TenantId::from("_"), "t").await.unwrap()
    };
    assert!(load().await.from_artifact, "the host's own file is used");

    // Writable by the group and others: anyone could have rewritten it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let tool = load().await;
    assert!(!tool.from_artifact, "a world-writable artifact was loaded");
    let mode = std::fs::symlink_metadata(artifact())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "replaced by the host's own file");
    assert!(load().await.from_artifact);

    // A symlink, even to a valid artifact of the same component.
    let elsewhere = dir.join("planted.cwasm");
    std::fs::copy(&path, &elsewhere).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let tool = load().await;
    assert!(
        !tool.from_artifact,
        "an artifact behind a symlink was loaded"
    );
    assert!(
        std::fs::symlink_metadata(artifact()).unwrap().is_file(),
        "the symlink is gone"
    );
    assert!(load().await.from_artifact);

    // Not a file at all: cleared, and the tool still loads.
    let path = artifact();
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("x"), b"x").unwrap();
    assert!(!load().await.from_artifact);
    assert!(std::fs::symlink_metadata(artifact()).unwrap().is_file());
}

/// A version row whose stored function list cannot be read is an error
/// (`corrupt`), never shown as a tool with no functions.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_function_list_is_an_error_not_an_empty_one() {
    use sqlx::Connection;
    let dir = tempdir("registry-functions");
    let (registry, storage, _) = open(&dir).await;
    reg(&registry, "_", "t", None, bytes("text-tools"), None, true)
        .await
        .unwrap();
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE tool_versions SET functions = 'not json'")
        .execute(&mut c)
        .await
        .unwrap();
    let e = storage
        .tool_versions(&TenantId::from("_"), "t")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Corrupt, "{}", e.message);
}
