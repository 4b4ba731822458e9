//! The `host` command line as users and scripts rely on it: stdout, the
//! `--json` shape, exit codes, and clear errors for bad input.

mod common;

use common::{guest, repo_root};
use serde_json::{Value, json};
use std::process::{Command, Output};

fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .output()
        .expect("running host")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn run_prints_the_result_as_json_and_exits_zero() {
    let refund = guest("refund");
    let out = host(&[
        "run",
        path(&refund),
        "lookup-order",
        "--args",
        r#"{"order_id": "ord_1003"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["ok"]["id"], "ord_1003");
    assert_eq!(v["ok"]["status"], "paid");
    assert_eq!(v["ok"]["shipped-on"], Value::Null);
    // The guest's log line goes to stderr, never into the result.
    assert!(String::from_utf8_lossy(&out.stderr).contains("lookup ord_1003"));
}

#[test]
fn run_json_has_the_documented_shape() {
    let out = host(&[
        "run",
        path(&guest("refund")),
        "create-refund-draft",
        "--json",
        "--args",
        r#"{"order-id": "ord_1002", "amount-usd": 20.5, "reason": {"other": "late"}}"#,
    ]);
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["result"]["ok"]["reason"], json!({"other": "late"}));
    assert_eq!(v["result"]["ok"]["note"], Value::Null);
    for key in ["fuel", "wall_ms", "memory_peak_bytes"] {
        assert!(v["usage"][key].is_u64(), "usage.{key}: {v}");
    }
    assert!(v["usage"]["fuel"].as_u64().unwrap() > 0);
    assert_eq!(v["stdout"], "");
    assert_eq!(v["stderr"], "");
    assert!(v.get("error").is_none());
}

#[test]
fn failures_exit_nonzero_with_a_stable_kind() {
    let hostile = guest("hostile");
    let out = host(&["run", path(&hostile), "spin", "--fuel", "1000000", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "fuel_exhausted");
    assert_eq!(v["usage"]["fuel"], 1_000_000);

    let out = host(&[
        "run",
        path(&hostile),
        "spin",
        "--fuel",
        "unlimited",
        "--timeout",
        "200ms",
        "--json",
    ]);
    assert_eq!(stdout_json(&out)["error"]["kind"], "timeout");

    let out = host(&[
        "run",
        path(&hostile),
        "alloc-forever",
        "--memory",
        "8MiB",
        "--json",
    ]);
    assert_eq!(stdout_json(&out)["error"]["kind"], "memory_limit");

    let out = host(&["run", path(&hostile), "echo", "--args", r#"{"s": 5}"#]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error[invalid_args]: args.s: expected a string"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no result on stdout for a failure");

    let out = host(&["run", path(&hostile), "nope", "--json"]);
    assert_eq!(stdout_json(&out)["error"]["kind"], "unknown_function");

    let out = host(&[
        "run",
        path(&hostile),
        "echo",
        "--args",
        "{not json",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["kind"], "invalid_args");

    let out = host(&["run", path(&hostile), "echo", "--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2), "bad flags are usage errors");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory"));
}

#[test]
fn args_may_come_from_a_file() {
    let dir = tempdir();
    let file = dir.join("args.json");
    std::fs::write(&file, r#"{"name": "file"}"#).unwrap();
    let out = host(&[
        "run",
        path(&guest("text-tools")),
        "hello",
        "--args",
        &format!("@{}", file.display()),
    ]);
    assert!(out.status.success());
    assert_eq!(stdout_json(&out), json!("Hello, file!"));
    // A file without end (or a huge one) is refused past a bound, not read
    // until memory runs out.
    #[cfg(unix)]
    {
        let out = host(&[
            "run",
            path(&guest("text-tools")),
            "hello",
            "--args",
            "@/dev/zero",
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("more than 64 MiB"), "{stderr}");
    }
}

#[test]
fn inspect_json_lists_functions_schemas_and_openai_tools() {
    let out = host(&["inspect", path(&guest("types")), "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let functions = v["functions"].as_array().unwrap();
    let names: Vec<&str> = functions
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"divide")
            && names.contains(&"crm/divide")
            && names.contains(&"roundtrip/echo-u64")
    );
    let div = functions
        .iter()
        .find(|f| f["name"] == "crm/divide")
        .unwrap();
    assert_eq!(
        div["signature"],
        "crm/divide(a: s32, b: s32) -> result<s32, string>"
    );
    assert_eq!(div["parameters"]["required"], json!(["a", "b"]));
    let tools = v["openai_tools"].as_array().unwrap();
    assert_eq!(tools.len(), functions.len());
    let t = tools
        .iter()
        .find(|t| t["function"]["name"] == "crm__divide")
        .unwrap();
    assert_eq!(t["type"], "function");
    assert_eq!(t["function"]["parameters"]["type"], "object");
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().starts_with("wasi:cli/"))
    );
}

#[test]
fn docs_come_from_wit_and_can_be_embedded() {
    let refund = guest("refund");
    let wit = repo_root().join("guest-examples/refund/wit");
    // Without docs, there is no description.
    let plain = stdout_json(&host(&["inspect", path(&refund), "--format", "json"]));
    assert_eq!(plain["functions"][0]["description"], Value::Null);
    // --wit takes docs from the source.
    let with_wit = stdout_json(&host(&[
        "inspect",
        path(&refund),
        "--wit",
        path(&wit),
        "--format",
        "json",
    ]));
    let lookup = &with_wit["functions"][0];
    assert_eq!(lookup["description"], "Look an order up by its id.");
    let order = &lookup["result"]["oneOf"][0]["properties"]["ok"];
    assert_eq!(order["title"], "order");
    assert_eq!(order["description"], "An order as the shop knows it.");
    assert_eq!(
        order["properties"]["email"]["description"],
        "The customer's e-mail address (personal data: redact it in logs)."
    );
    // Embedding writes them into the component; inspect then reads them
    // without --wit, and the component still runs.
    let dir = tempdir();
    let documented = dir.join("refund.wasm");
    let out = host(&[
        "docs",
        "embed",
        path(&refund),
        "--wit",
        path(&wit),
        "-o",
        path(&documented),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let embedded = stdout_json(&host(&["inspect", path(&documented), "--format", "json"]));
    assert_eq!(embedded["functions"], with_wit["functions"]);
    assert_eq!(embedded["warnings"], json!([]));
    // Embedding twice replaces the section rather than adding a second one.
    let out = host(&["docs", "embed", path(&documented), "--wit", path(&wit)]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&documented).unwrap().len(), {
        let once = std::fs::read(dir.join("refund.wasm")).unwrap();
        once.len()
    });
    let run = host(&[
        "run",
        path(&documented),
        "issue-refund",
        "--args",
        r#"{"order-id": "ord_1001", "amount-usd": 10}"#,
    ]);
    assert!(run.status.success());
    assert_eq!(stdout_json(&run)["ok"]["refund-id"], "re_ord_1001_1000");
}

#[test]
fn a_component_that_does_not_match_its_wit_is_refused() {
    let out = host(&[
        "inspect",
        path(&guest("refund")),
        "--wit",
        path(&repo_root().join("guest-examples/text-tools/wit")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error[invalid_component]") && stderr.contains("does not match"),
        "{stderr}"
    );
}

#[test]
fn bad_components_get_clear_errors() {
    let dir = tempdir();
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            guest("bad-import"),
            "imports `example:bad-import/backdoor`, which the host does not provide",
        ),
        (guest("resource-export"), "resources are not supported"),
        (
            write(&dir, "module.wasm", b"\0asm\x01\0\0\0"),
            "core WebAssembly module, not a component",
        ),
        (
            write(&dir, "text.wasm", b"hello, world"),
            "not a WebAssembly binary",
        ),
        (write(&dir, "empty.wasm", b""), "not a WebAssembly binary"),
        (dir.join("missing.wasm"), "cannot read"),
    ];
    let refund = std::fs::read(guest("refund")).unwrap();
    let truncated = write(&dir, "truncated.wasm", &refund[..refund.len() / 2]);
    let mut corrupt = refund.clone();
    for b in corrupt.iter_mut().skip(200).step_by(97) {
        *b ^= 0x5a;
    }
    let corrupt = write(&dir, "corrupt.wasm", &corrupt);
    for (file, expected) in cases {
        let out = host(&["inspect", path(&file)]);
        assert_eq!(out.status.code(), Some(1), "{}", file.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error[invalid_component]"),
            "{}: {stderr}",
            file.display()
        );
        assert!(stderr.contains(expected), "{}: {stderr}", file.display());
    }
    for file in [truncated, corrupt] {
        let out = host(&["run", path(&file), "lookup-order", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", file.display());
        assert_eq!(stdout_json(&out)["error"]["kind"], "invalid_component");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "toolhost-cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn policy_path() -> String {
    repo_root()
        .join("policies/refund-request.yaml")
        .display()
        .to_string()
}

#[test]
fn run_with_a_policy_goes_through_the_gate_and_is_audited() {
    let data = tempdir();
    let d = data.display().to_string();
    let refund = guest("refund");
    let p = policy_path();
    let base = ["run", path(&refund)];
    let gated = |function: &str, args: &str, extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend([
            function,
            "--args",
            args,
            "--policy",
            p.as_str(),
            "--data-dir",
            d.as_str(),
            "--task",
            "cli-task",
        ]);
        a.extend(extra);
        host(&a)
    };
    let out = gated(
        "lookup-order",
        r#"{"order-id": "ord_1002"}"#,
        &["--json", "--audit"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["ok"], true);
    let audit = v["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 1);
    let record = &audit[0]["record"];
    assert_eq!(record["invocation_id"], v["invocation_id"]);
    assert_eq!(record["decision"]["effect"], "allow");
    assert_eq!(record["result"]["ok"]["email"], "[REDACTED]");
    assert_eq!(
        record["workflow"], "refund_request",
        "the policy's only workflow is the default"
    );

    let out = gated(
        "issue-refund",
        r#"{"order-id": "ord_1002", "amount-usd": 99}"#,
        &["--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["kind"], "approval_required");

    let verify = host(&["audit", "verify", "--data-dir", &d]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("chain _: 2 records: ok"));

    let export = data.join("export.jsonl");
    let out = host(&[
        "audit",
        "export",
        "--data-dir",
        &d,
        "--since",
        "2000-01-01",
        "-o",
        path(&export),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(&export).unwrap();
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains(r#""type":"entry""#))
            .count(),
        2
    );
    let out = host(&["audit", "verify", "--file", path(&export)]);
    assert!(out.status.success());

    // Three more tool calls use up the task's budget of four.
    for _ in 0..3 {
        assert!(
            gated("lookup-order", r#"{"order-id": "ord_1001"}"#, &[])
                .status
                .success()
        );
    }
    let out = gated("lookup-order", r#"{"order-id": "ord_1001"}"#, &["--json"]);
    let v = stdout_json(&out);
    assert_eq!(v["error"]["kind"], "budget_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tool_calls is 4")
    );

    // Token reports count against the task too.
    let out = host(&[
        "budget",
        "tokens",
        "--data-dir",
        &d,
        "--policy",
        &p,
        "--task",
        "tok",
        "--input",
        "3500",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_input_tokens is 3000"));

    // Tampering with the database is caught by the CLI as well.
    let url = format!("sqlite://{}", data.join("toolhost.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "UPDATE audit_entries SET body = replace(body, 'ord_1002', 'ord_9999') WHERE seq = 1",
        )
        .execute(&mut c)
        .await
        .unwrap();
    });
    let out = host(&["audit", "verify", "--data-dir", &d]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("entry 1: its content does not match its hash (modified)"),
        "{stdout}"
    );
}

#[test]
fn an_invalid_policy_file_is_rejected_with_file_line_and_field() {
    let dir = tempdir();
    let bad = write(
        &dir,
        "bad.yaml",
        b"workflow: w\nbudget:\n  max_tool_calls: lots\n",
    );
    let out = host(&[
        "run",
        path(&guest("text-tools")),
        "hello",
        "--policy",
        path(&bad),
        "--data-dir",
        path(&dir),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error[invalid_policy]"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("budget.max_tool_calls"), "{stderr}");
}

#[test]
fn secrets_never_reach_logs_or_the_data_dir() {
    let dir = tempdir();
    let secret = "ghp_SUPER_SECRET_value_91x";
    let secrets = write(
        &dir,
        "secrets.yaml",
        format!("api_token: {secret}\n").as_bytes(),
    );
    let policy = write(
        &dir,
        "p.yaml",
        br#"
workflow: w
policy:
  allow_tools: [get-json]
tools:
  http-json:
    http:
      - url: https://api.example.invalid
        headers: {Authorization: "token {{secret:api_token}}"}
"#,
    );
    let data = dir.join("data");
    let out = host(&[
        "run",
        path(&guest("http-json")),
        "get-json",
        "--args",
        r#"{"url": "https://api.example.invalid/user"}"#,
        "--policy",
        path(&policy),
        "--secrets",
        path(&secrets),
        "--data-dir",
        path(&data),
        "--json",
        "--audit",
    ]);
    let all = [out.stdout.clone(), out.stderr.clone()].concat();
    assert!(
        !all.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "secret in CLI output"
    );
    let v = stdout_json(&out);
    assert_eq!(v["outbound"][0]["allowed"], true, "{v}");
    for entry in std::fs::read_dir(&data).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

#[test]
fn run_with_an_idempotency_key_runs_once() {
    let dir = common::tempdir("cli-idem");
    let policy = dir.join("p.yaml");
    std::fs::write(&policy, "workflow: w\npolicy:\n  allow_tools: [hello]\n").unwrap();
    let tool = guest("text_tools");
    let run = |name: &str| {
        host(&[
            "run",
            path(&tool),
            "hello",
            "--args",
            &format!(r#"{{"name": "{name}"}}"#),
            "--policy",
            path(&policy),
            "--data-dir",
            path(&dir),
            "--idempotency-key",
            "k-1",
            "--json",
        ])
    };
    let first = run("a");
    assert!(first.status.success());
    let second = run("a");
    assert!(second.status.success());
    let (a, b) = (stdout_json(&first), stdout_json(&second));
    assert_eq!(a["invocation_id"], b["invocation_id"], "no second run");
    assert_eq!(b["result"], "Hello, a!");
    assert_eq!(b["replayed"], true);
    let other = run("b");
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("idempotency_key_reused"));
    // Without a policy there is nowhere to keep the key.
    let out = host(&[
        "run",
        path(&tool),
        "hello",
        "--args",
        r#"{"name": "a"}"#,
        "--idempotency-key",
        "k",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// `host args` with its reader gone before the first line is written: its
/// output, and its stderr (checked to hold no panic).
fn with_stdout_closed(args: &[&str]) -> (Output, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    (out, stderr)
}

/// A command whose reader stops reading (`host inspect x.wasm | head`)
/// ends quietly, as a Unix tool does: no panic, no exit code 101.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_a_printing_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let wasm = guest("text-tools");
    for args in [
        vec!["inspect", path(&wasm)],
        vec!["inspect", path(&wasm), "--format", "json"],
    ] {
        let (out, stderr) = with_stdout_closed(&args);
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {stderr}"
        );
    }
}

/// The same for the commands over a data dir (which may hold a database
/// connection, so they do not die of the signal): a reader that is gone
/// ends them with status 141 and no panic, whatever they were printing.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_a_data_dir_command_with_status_141() {
    let data = tempdir();
    let d = data.display().to_string();
    let wasm = guest("text-tools");
    let w = path(&wasm);
    for mut args in [
        vec!["register", w, "--name", "text-tools", "--tenant", "a"],
        vec!["keys", "create", "--tenant", "a", "--role", "invoke"],
    ] {
        args.extend(["--data-dir", &d]);
        let out = host(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    // No trail was opened on this store yet (nothing invoked): that is not
    // a deleted one.
    let out = host(&["audit", "verify", "--data-dir", &d]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with("verified\n"),
        "{out:?}"
    );
    for args in [
        vec!["audit", "verify", "--data-dir", &d],
        vec!["audit", "verify", "--data-dir", &d, "--json"],
        vec!["tools", "list", "--tenant", "a", "--data-dir", &d],
        vec![
            "tools",
            "describe",
            "text-tools",
            "--tenant",
            "a",
            "--data-dir",
            &d,
        ],
        vec!["keys", "list", "--data-dir", &d],
    ] {
        let (out, stderr) = with_stdout_closed(&args);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
}

/// A database setting in the environment that cannot be read is an error
/// naming it, before anything connects; never quietly the default.
#[test]
fn a_bad_database_setting_is_named() {
    let data = tempdir();
    for (name, value) in [
        ("TOOLHOST_DATABASE_POOL", "lots"),
        ("TOOLHOST_DATABASE_POOL", "0"),
        ("TOOLHOST_DATABASE_KEEP_PLANS", "maybe"),
        ("TOOLHOST_DATABASE_CONNECT_TIMEOUT", "soon"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["tools", "list", "--data-dir", path(&data)])
            // Nothing listens there: a setting that is read gets this far.
            .env("TOOLHOST_DATABASE_URL", "postgres://u:p@127.0.0.1:1/db")
            .env("TOOLHOST_DATABASE_CONNECT_TIMEOUT", "1s")
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}={value}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(&format!("`{value}`")),
            "{name}={value}: {stderr}"
        );
    }
}
