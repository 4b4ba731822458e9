//! `host serve` end to end, over real HTTP: a spawned server on a random
//! port with a temporary data dir, driven the way orchestrators, operators
//! and scripts drive it.

mod common;

use common::serve::{Client, Server, data_dir, host, key, ok, s};
use common::{guest, tempdir};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn register_list_invoke_and_fetch_the_record() {
    let dir = data_dir(
        "serve-basic",
        &[("text-tools", "text_tools"), ("types", "types")],
    );
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));

    // The native listing, with schemas.
    let (status, list) = c.get("/v1/tools").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["text-tools", "types"]);
    let hello = &list["tools"][0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "hello")
        .unwrap()
        .clone();
    assert_eq!(hello["llm_name"], "text-tools__hello");
    assert_eq!(hello["parameters"]["type"], "object");

    // Every LLM format: the exact arrays, names unique and valid.
    for (format, name_at) in [
        ("openai", "/function/name"),
        ("anthropic", "/name"),
        ("mcp", "/name"),
    ] {
        let (status, defs) = c.get(&format!("/v1/tools?format={format}")).await;
        assert_eq!(status, 200, "{defs}");
        let defs = defs.as_array().unwrap();
        let mut names: Vec<&str> = defs
            .iter()
            .map(|d| d.pointer(name_at).unwrap().as_str().unwrap())
            .collect();
        assert!(names.contains(&"text-tools__hello"), "{format}: {names:?}");
        assert!(names.contains(&"types__crm__divide"), "{format}: {names:?}");
        for n in &names {
            assert!(
                n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{n}"
            );
        }
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total, "{format}: names are unique");
    }
    let (status, defs) = c.get("/v1/tools?format=openai").await;
    assert_eq!(status, 200);
    assert_eq!(defs[0]["type"], "function");
    let (status, _) = c.get("/v1/tools?format=yaml").await;
    assert_eq!(status, 400);

    // Invoke by `tool/function`, by the LLM name, and an interface function.
    let (status, r) = c
        .post(
            "/v1/tools/text-tools/hello/invoke",
            json!({"args": {"name": "Ada"}, "task_id": "t-1"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "ok");
    assert_eq!(r["result"], "Hello, Ada!");
    assert_eq!(r["version"], "1");
    assert!(r["usage"]["fuel"].as_u64().unwrap() > 0);
    let id = r["invocation_id"].as_str().unwrap().to_string();

    let (status, r2) = c
        .post(
            "/v1/tools/types__crm__divide/invoke",
            json!({"args": {"a": 7, "b": 0}}),
        )
        .await;
    assert_eq!(status, 200, "a tool's own error is data: {r2}");
    assert_eq!(r2["status"], "ok");
    assert!(r2["result"]["err"].is_string(), "{r2}");
    let (status, r3) = c
        .post(
            "/v1/tools/types/crm/divide/invoke",
            json!({"args": {"a": 7, "b": 2}}),
        )
        .await;
    assert_eq!((status, &r3["result"]), (200, &json!({"ok": 3})), "{r3}");

    // The record, as the caller was answered, with its context.
    let (status, rec) = c.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["result"], "Hello, Ada!");
    assert_eq!(rec["task_id"], "t-1");
    assert_eq!(rec["tool"], "text-tools");
    assert!(rec["principal"].as_str().unwrap().len() == 16);

    // Listing with filters and pages.
    let (_, all) = c.get("/v1/invocations?limit=2").await;
    assert_eq!(all["invocations"].as_array().unwrap().len(), 2);
    let cursor = all["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = c
        .get(&format!("/v1/invocations?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest["invocations"][0]["invocation_id"], id.as_str());
    let (_, by_task) = c.get("/v1/invocations?task_id=t-1").await;
    assert_eq!(by_task["invocations"].as_array().unwrap().len(), 1);
    let (status, _) = c.get("/v1/invocations?limit=0").await;
    assert_eq!(status, 400);

    // OpenAPI 3.1 and health.
    let (status, doc) = Client::new(&server, None).get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["paths"]["/v1/tools/{tool}/invoke"]["post"].is_object());
    assert!(doc["paths"]["/v1/invocations/{id}"]["get"].is_object());
    // Structurally sound: unique operation ids; every `{param}` of a path
    // declared `in: path`, every other parameter `in: query` or a header.
    let mut ids = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            ids.push(op["operationId"].as_str().unwrap().to_string());
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let braced = path.contains(&format!("{{{name}}}"));
                let place = p["in"].as_str().unwrap();
                assert_eq!(
                    braced,
                    place == "path",
                    "{method} {path}: {name} in {place}"
                );
                if place == "path" {
                    assert_eq!(p["schema"]["minLength"], 1, "{method} {path}: {name}");
                }
            }
            // Any error answer of an API operation may be a problem document.
            if path.starts_with("/v1/") {
                for (code, response) in op["responses"].as_object().unwrap() {
                    if code.as_str() >= "400" {
                        assert!(
                            response["content"]["application/problem+json"].is_object(),
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "operation ids are unique");
    let (status, _) = Client::new(&server, None).get("/healthz").await;
    assert_eq!(status, 200);
    let (status, ready) = Client::new(&server, None).get("/readyz").await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    server.stop();
}

#[tokio::test]
async fn status_codes_follow_the_documented_mapping() {
    let dir = data_dir(
        "serve-status",
        &[
            ("text-tools", "text_tools"),
            ("refund", "refund"),
            ("hostile", "hostile"),
        ],
    );
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));

    // Invalid arguments: 422, recorded as refused.
    let (status, r) = c
        .post(
            "/v1/tools/text-tools/hello/invoke",
            json!({"args": {"name": 5}}),
        )
        .await;
    assert_eq!(status, 422, "{r}");
    assert_eq!(r["status"], "refused");
    assert_eq!(r["error"]["kind"], "invalid_args");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("args.name")
    );
    // Policy: 403.
    let (status, r) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "o", "amount-usd": 10.0}}),
        )
        .await;
    assert_eq!(
        (status, &r["status"]),
        (202, &json!("pending_approval")),
        "{r}"
    );
    let (status, r) = c
        .post("/v1/tools/refund/nope/invoke", json!({"args": {}}))
        .await;
    assert_eq!(
        (status, &r["error"]["kind"]),
        (404, &json!("unknown_function")),
        "{r}"
    );
    // Sandbox failure: 200, status error, with its kind.
    let (status, r) = c.post("/v1/tools/hostile/spin/invoke", json!({})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"]["kind"], "fuel_exhausted");
    let (status, r) = c
        .post(
            "/v1/tools/hostile/panic/invoke",
            json!({"args": {"message": "boom"}}),
        )
        .await;
    assert_eq!((status, &r["error"]["kind"]), (200, &json!("trap")), "{r}");
    // Budget: the policy allows 3 tool calls per task; the 4th is 429 and
    // names the limit.
    for i in 0..3 {
        let (status, r) = c
            .post(
                "/v1/tools/text-tools/hello/invoke",
                json!({"args": {"name": "x"}, "task_id": "budgeted"}),
            )
            .await;
        assert_eq!(status, 200, "call {i}: {r}");
    }
    let (status, r) = c
        .post(
            "/v1/tools/text-tools/hello/invoke",
            json!({"args": {"name": "x"}, "task_id": "budgeted"}),
        )
        .await;
    assert_eq!(status, 429, "{r}");
    assert_eq!(r["error"]["kind"], "budget_exceeded");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tool_calls"),
        "{r}"
    );
    let (_, usage) = c.get("/v1/tasks/budgeted/usage").await;
    assert!(usage["usage"].to_string().contains("tool_calls"), "{usage}");

    // Token usage from the orchestrator.
    let (status, r) = c
        .post(
            "/v1/tasks/budgeted/usage",
            json!({"input_tokens": 100, "output_tokens": 20}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["within_budget"], true);
    let (status, _) = c
        .post("/v1/tasks/budgeted/usage", json!({"input_tokens": -1}))
        .await;
    assert_eq!(status, 400, "negative token counts are malformed");
    // JSON Schema's `integer` includes 5.0; fractions are malformed.
    let (status, r) = c
        .post("/v1/tasks/budgeted/usage", json!({"output_tokens": 5.0}))
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, p) = c
        .post("/v1/tasks/budgeted/usage", json!({"output_tokens": 5.5}))
        .await;
    assert_eq!(status, 400, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("output_tokens"),
        "{p}"
    );

    // Malformed requests: clear 4xx problems.
    let (status, p) = c
        .post_raw(
            "/v1/tools/text-tools/hello/invoke",
            b"{\"args\": ".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(status, 400, "{p}");
    let (status, p) = c
        .post("/v1/tools/text-tools/hello/invoke", json!({"argz": {}}))
        .await;
    assert_eq!(status, 400, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("argz"), "{p}");
    let (status, _) = c
        .post("/v1/tools/text-tools/invoke", json!({"args": {}}))
        .await;
    assert_eq!(status, 404, "several functions: name one");
    let (status, _) = c.post("/v1/tools/nope/invoke", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = c.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    let (status, _) = c.get("/v1/tools/text-tools/hello/invoke").await;
    assert_eq!(status, 405);
    let big = vec![b' '; 2 << 20];
    let (status, p) = c
        .post_raw("/v1/tools/text-tools/hello/invoke", big, "application/json")
        .await;
    assert_eq!(
        (status, &p["kind"]),
        (413, &json!("payload_too_large")),
        "{p}"
    );
    server.stop();
}

#[tokio::test]
async fn the_auth_matrix() {
    let dir = data_dir("serve-auth", &[("text-tools", "text_tools")]);
    let acme_invoke = key(&dir, "acme", &["invoke"]);
    let acme_audit = key(&dir, "acme", &["audit"]);
    let acme_admin = key(&dir, "acme", &["admin"]);
    let other = key(&dir, "globex", &["invoke", "admin"]);
    let server = Server::start(&dir, &[]);
    let hello = json!({"args": {"name": "a"}});
    let path = "/v1/tools/text-tools/hello/invoke";

    // No key, a malformed key, a key that does not exist: 401.
    let (status, p) = Client::new(&server, None).post(path, hello.clone()).await;
    assert_eq!((status, &p["kind"]), (401, &json!("unauthenticated")));
    let (status, _) = Client::new(&server, Some("nonsense"))
        .get("/v1/tools")
        .await;
    assert_eq!(status, 401);
    let forged = format!("{}0", &acme_invoke[..acme_invoke.len() - 1]);
    let forged = if forged == acme_invoke {
        format!("{}1", &acme_invoke[..acme_invoke.len() - 1])
    } else {
        forged
    };
    let (status, _) = Client::new(&server, Some(&forged)).get("/v1/tools").await;
    assert_eq!(status, 401);

    // The right tenant and role.
    let (status, r) = Client::new(&server, Some(&acme_invoke))
        .post(path, hello.clone())
        .await;
    assert_eq!(status, 200, "{r}");
    let id = r["invocation_id"].as_str().unwrap().to_string();

    // Wrong role: 403.
    let (status, p) = Client::new(&server, Some(&acme_audit))
        .post(path, hello.clone())
        .await;
    assert_eq!((status, &p["kind"]), (403, &json!("forbidden")), "{p}");
    let (status, _) = Client::new(&server, Some(&acme_invoke))
        .post_raw(
            "/v1/tools?name=x",
            std::fs::read(guest("text_tools")).unwrap(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = Client::new(&server, Some(&acme_invoke))
        .post("/v1/tools/text-tools/disable", json!({}))
        .await;
    assert_eq!(status, 403);
    // The audit role reads records.
    let (status, _) = Client::new(&server, Some(&acme_audit))
        .get(&format!("/v1/invocations/{id}"))
        .await;
    assert_eq!(status, 200);

    // Another tenant sees nothing of acme's: 404, never 403.
    let g = Client::new(&server, Some(&other));
    let (status, list) = g.get("/v1/tools").await;
    assert_eq!((status, &list["tools"]), (200, &json!([])));
    let (status, _) = g.post(path, hello.clone()).await;
    assert_eq!(status, 404);
    let (status, _) = g.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(status, 404);
    let (_, list) = g.get("/v1/invocations").await;
    assert_eq!(list["invocations"], json!([]));
    let (status, _) = g.get("/v1/tools/text-tools").await;
    assert_eq!(status, 404);
    let (status, _) = g.post("/v1/tools/text-tools/disable", json!({})).await;
    assert_eq!(status, 404);

    // Admin: disable hides and refuses; enable restores.
    let a = Client::new(&server, Some(&acme_admin));
    let (status, _) = a.post("/v1/tools/text-tools/disable", json!({})).await;
    assert_eq!(status, 200);
    let (_, list) = a.get("/v1/tools").await;
    assert_eq!(list["tools"], json!([]));
    let (status, p) = a.post(path, hello.clone()).await;
    assert_eq!((status, &p["kind"]), (409, &json!("tool_disabled")), "{p}");
    let (status, _) = a.post("/v1/tools/text-tools/enable", json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = a.post(path, hello.clone()).await;
    assert_eq!(status, 200);

    // A key revoked while the server runs stops working.
    let kid = &acme_invoke[4..20];
    ok(host(&["keys", "revoke", kid, "--data-dir", s(&dir)]));
    // Keys are remembered for at most a second.
    let mut refused = false;
    for _ in 0..30 {
        let (status, _) = Client::new(&server, Some(&acme_invoke))
            .get("/v1/tools")
            .await;
        if status == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "a revoked key kept working");
    server.stop();
}

#[tokio::test]
async fn uploads_are_validated_and_bad_ones_change_nothing() {
    let dir = data_dir("serve-upload", &[]);
    let admin = key(&dir, "acme", &["admin"]);
    let server = Server::start(&dir, &["--max-upload", "4MiB"]);
    let c = Client::new(&server, Some(&admin));
    let text_tools = std::fs::read(guest("text_tools")).unwrap();

    let (status, r) = c
        .post_raw(
            "/v1/tools?name=text-tools",
            text_tools.clone(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["version"], "1");
    // The same bytes again: nothing new.
    let (status, r) = c
        .post_raw(
            "/v1/tools?name=text-tools",
            text_tools.clone(),
            "application/wasm",
        )
        .await;
    assert_eq!((status, &r["created"]), (200, &json!(false)), "{r}");
    let (_, before) = c.get("/v1/tools/text-tools").await;

    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let mut truncated = text_tools.clone();
    truncated.truncate(text_tools.len() / 2);
    let bad_import = std::fs::read(guest("bad_import")).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/tools?name=x",
            b"not wasm at all".to_vec(),
            422,
            "invalid_component",
        ),
        ("/v1/tools?name=x", Vec::new(), 422, "invalid_component"),
        ("/v1/tools?name=x", core_module, 422, "invalid_component"),
        ("/v1/tools?name=x", truncated, 422, "invalid_component"),
        ("/v1/tools?name=x", bad_import, 422, "invalid_component"),
        ("/v1/tools", text_tools.clone(), 400, "invalid_request"),
        (
            "/v1/tools?name=bad%20name",
            text_tools.clone(),
            422,
            "invalid_args",
        ),
        (
            "/v1/tools?name=x&colour=red",
            text_tools.clone(),
            400,
            "invalid_request",
        ),
        // Version 1 of text-tools exists with other bytes.
        (
            "/v1/tools?name=text-tools&version=1",
            std::fs::read(guest("types")).unwrap(),
            409,
            "conflict",
        ),
        (
            "/v1/tools?name=x",
            vec![0u8; 5 << 20],
            413,
            "payload_too_large",
        ),
    ];
    for (path, body, want, kind) in cases {
        // A fresh connection each: the server closes one whose body it
        // refused unread. Then the client may see the connection reset
        // while it still sends, before it reads the 413 (no lingering
        // close): that too is the upload refused.
        if want == 413 {
            let sent = reqwest::Client::new()
                .post(format!("{}{path}", server.url))
                .bearer_auth(&admin)
                .header("content-type", "application/wasm")
                .body(body)
                .send()
                .await;
            if let Ok(r) = sent {
                let (status, p) = common::serve::answer(r).await;
                assert_eq!((status, p["kind"].as_str().unwrap()), (want, kind), "{p}");
            }
            continue;
        }
        let c = Client::new(&server, Some(&admin));
        let (status, p) = c.post_raw(path, body, "application/wasm").await;
        assert_eq!(
            (status, p["kind"].as_str().unwrap()),
            (want, kind),
            "{path}: {p}"
        );
    }
    // Nothing stored changed.
    let (_, after) = c.get("/v1/tools/text-tools").await;
    assert_eq!(before, after);
    let (_, list) = c.get("/v1/tools").await;
    assert_eq!(list["tools"].as_array().unwrap().len(), 1, "{list}");

    // A new version deploys; rollback re-points the name.
    let (status, r) = c
        .post_raw(
            "/v1/tools?name=text-tools&version=2",
            text_tools.clone(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let (status, _) = c
        .post("/v1/tools/text-tools/deploy", json!({"version": "1"}))
        .await;
    assert_eq!(status, 200);
    let (_, d) = c.get("/v1/tools/text-tools").await;
    assert_eq!(d["version"], "1");
    assert_eq!(d["versions"].as_array().unwrap().len(), 2);
    let (status, _) = c
        .post("/v1/tools/text-tools/deploy", json!({"version": "9"}))
        .await;
    assert_eq!(status, 404);
    server.stop();
}

#[tokio::test]
async fn a_restart_keeps_tools_and_does_not_recompile() {
    let dir = data_dir("serve-restart", &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["invoke"]);
    let call = json!({"args": {"text": "a b a"}});
    let server = Server::start(&dir, &[]);
    let (status, r) = Client::new(&server, Some(&k))
        .post("/v1/tools/text-tools/word-count/invoke", call.clone())
        .await;
    assert_eq!(status, 200, "{r}");
    let id = r["invocation_id"].as_str().unwrap().to_string();
    server.stop();

    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    let (status, r) = c.post("/v1/tools/text-tools/word-count/invoke", call).await;
    assert_eq!((status, &r["result"]["words"]), (200, &json!(3)), "{r}");
    let (status, _) = c.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(status, 200, "records survive a restart");
    let log = server.log();
    assert!(
        log.contains("tool loaded") && log.contains("precompiled=true"),
        "{log}"
    );
    assert!(!log.contains("precompiled=false"), "{log}");
    server.stop();
    let out = host(&["audit", "verify", "--data-dir", s(&dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn admin_commands_work_while_the_server_runs() {
    let dir = data_dir("serve-admin", &[("text-tools", "text_tools")]);
    let server = Server::start(&dir, &[]);
    // A key made now works at once; a tool registered now is listed at once.
    let k = key(&dir, "acme", &["invoke"]);
    ok(host(&[
        "register",
        s(&guest("types")),
        "--name",
        "types",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
    ]));
    let c = Client::new(&server, Some(&k));
    let (_, list) = c.get("/v1/tools").await;
    assert_eq!(list["tools"].as_array().unwrap().len(), 2, "{list}");
    let (status, r) = c
        .post(
            "/v1/tools/types/divide/invoke",
            json!({"args": {"a": 1.0, "b": 4.0}}),
        )
        .await;
    assert_eq!((status, &r["result"]), (200, &json!(0.25)), "{r}");
    // A disable from the command line takes effect within a second.
    ok(host(&[
        "tools",
        "disable",
        "types",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
    ]));
    let mut disabled = false;
    for _ in 0..30 {
        let (status, _) = c
            .post(
                "/v1/tools/types/divide/invoke",
                json!({"args": {"a": 1.0, "b": 4.0}}),
            )
            .await;
        if status == 409 {
            disabled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(disabled, "the disable did not take effect");
    // A new policy stored from the command line is put in force.
    std::fs::write(
        dir.join("strict.yaml"),
        "workflow: \"*\"\npolicy:\n  allow_tools: [word_count]\n",
    )
    .unwrap();
    ok(host(&[
        "policy",
        "set",
        s(&dir.join("strict.yaml")),
        "--data-dir",
        s(&dir),
    ]));
    let denied = c.hello_until(403, 50, Duration::from_millis(200)).await;
    assert!(denied, "the stored policy was not put in force");
    // A bad policy is refused before it is stored.
    std::fs::write(dir.join("bad.yaml"), "workflow: [\n").unwrap();
    let out = host(&[
        "policy",
        "set",
        s(&dir.join("bad.yaml")),
        "--data-dir",
        s(&dir),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_policy"));
    server.stop();
}

#[tokio::test]
async fn overload_is_refused_with_retry_after_and_shutdown_finishes_work() {
    let dir = data_dir(
        "serve-load",
        &[("hostile", "hostile"), ("text-tools", "text_tools")],
    );
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &["--max-concurrency", "1", "--max-queue", "0"]);
    let url = server.url.clone();
    // Retried while refused: it may arrive while a probe holds the slot.
    let slow = Client::new(&server, Some(&k)).sleep_forever();
    // While the slow call holds the only slot, others are refused at once.
    let mut refused = None;
    for _ in 0..40 {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/tools/text-tools/hello/invoke"))
            .bearer_auth(&k)
            .json(&json!({"args": {"name": "x"}}))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = refused.expect("no 503 while the only slot was busy");
    assert_eq!(r.headers()["retry-after"], "1");
    // Shut down while the slow invocation runs: it still finishes, is
    // answered and recorded.
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let r = slow.await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "timeout", "{body}");
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{}", server.log());
    let id = body["invocation_id"].as_str().unwrap();
    let server = Server::start(&dir, &[]);
    let (status, rec) = Client::new(&server, Some(&k))
        .get(&format!("/v1/invocations/{id}"))
        .await;
    assert_eq!((status, &rec["status"]), (200, &json!("error")), "{rec}");
    server.stop();
    let out = host(&["audit", "verify", "--data-dir", s(&dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn slow_or_idle_connections_are_closed_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let dir = data_dir("serve-conns", &[]);
    let server = Server::start(&dir, &["--header-timeout", "1s", "--max-connections", "1"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let read_all = |mut c: TcpStream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf))
            .await
            .expect("the server never closed the connection")
            .unwrap();
        String::from_utf8_lossy(&buf).to_string()
    };
    // A request head that never completes: closed after the timeout.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // The only connection slot is taken: this client is not served until
    // the slow one is dropped.
    let mut next = TcpStream::connect(&addr).await.unwrap();
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_all(slow).await, "", "no answer to an incomplete head");
    let answer = read_all(next).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "served while the only slot was held: {:?}",
        started.elapsed()
    );
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop();
}

#[tokio::test]
async fn a_slowly_sent_body_does_not_hold_an_invocation_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let dir = data_dir("serve-slowbody", &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &["--max-concurrency", "1", "--max-queue", "0"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    // Headers and half the body, then nothing for now.
    let body = br#"{"args": {"name": "slow"}}"#;
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/tools/text-tools/hello/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The only slot is free for others meanwhile: no 503.
    let c = Client::new(&server, Some(&k));
    for _ in 0..3 {
        let (status, r) = c.hello("x").await;
        assert_eq!(status, 200, "{r}");
    }
    // The slow request completes once its body arrives.
    slow.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), slow.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Hello, slow!"), "{answer}");
    server.stop();
}

#[test]
fn serve_refuses_to_start_without_a_policy_or_with_a_bad_one() {
    let dir = tempdir("serve-nopolicy");
    let out = host(&["serve", "--listen", "127.0.0.1:0", "--data-dir", s(&dir)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy"));
    assert!(out.stdout.is_empty());
    std::fs::write(dir.join("bad.yaml"), "policy: {allow_toolz: []}\n").unwrap();
    let out = host(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        s(&dir),
        "--policy",
        s(&dir.join("bad.yaml")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_toolz"));
    let out = host(&["serve", "--listen", "256.0.0.1:1", "--data-dir", s(&dir)]);
    assert!(!out.status.success());
}

#[test]
fn keys_create_checks_its_input() {
    let dir = tempdir("serve-keys");
    let out = host(&["keys", "create", "--tenant", "acme", "--data-dir", s(&dir)]);
    assert_eq!(out.status.code(), Some(2), "a role is required");
    let out = host(&[
        "keys",
        "create",
        "--tenant",
        "bad tenant",
        "--role",
        "invoke",
        "--data-dir",
        s(&dir),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = host(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--role",
        "root",
        "--data-dir",
        s(&dir),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let k = key(&dir, "acme", &["invoke", "approve"]);
    let list = ok(host(&["keys", "list", "--data-dir", s(&dir)]));
    assert!(
        list.contains(&k[4..20]) && list.contains("approve,invoke"),
        "{list}"
    );
    assert!(!list.contains(&k[21..]), "the secret is never shown again");
}

/// A page of the invocation list ends early past a few megabytes of
/// records (one tenant's `limit=500` over records of a megabyte each must
/// not cost the server gigabytes), and its `next_cursor` goes on from
/// there: every record comes once, newest first.
#[tokio::test]
async fn large_records_page_by_size() {
    let dir = data_dir("serve-list-size", &[("text-tools", "text-tools")]);
    let k = key(&dir, "acme", &["invoke", "audit"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    let big = "x".repeat(700_000);
    let mut ids = Vec::new();
    for _ in 0..16 {
        let (status, r) = c
            .post(
                "/v1/tools/text-tools/hello/invoke",
                json!({"args": {"name": big}}),
            )
            .await;
        assert_eq!(
            status,
            200,
            "{}",
            &r.to_string()[..200.min(r.to_string().len())]
        );
        ids.push(r["invocation_id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/invocations?limit=500&cursor={c}"),
            None => "/v1/invocations?limit=500".to_string(),
        };
        let (status, page) = c.get(&url).await;
        assert_eq!(status, 200);
        pages += 1;
        let rows = page["invocations"].as_array().unwrap();
        assert!(rows.len() <= 12, "a page of {} large records", rows.len());
        seen.extend(
            rows.iter()
                .map(|r| r["invocation_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert!(pages >= 2, "one page held everything");
    assert_eq!(seen, ids, "every record once, newest first");
    server.stop();
}

/// An invocation's audit entry names the code that ran: the SHA-256 of the
/// registered component's bytes, not only its version number (a version
/// row a database writer re-points would otherwise leave no trace).
#[tokio::test]
async fn the_audit_names_the_digest_of_the_code_that_ran() {
    let dir = data_dir("serve-digest", &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    let (status, r) = c.hello("Ada").await;
    assert_eq!(status, 200, "{r}");
    server.stop();
    let out = host(&["audit", "export", "--tenant", "acme", "--data-dir", s(&dir)]);
    assert!(out.status.success());
    let export = String::from_utf8(out.stdout).unwrap();
    let entry: Value = export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "entry")
        .map(|l| serde_json::from_str(l["body"].as_str().unwrap()).unwrap())
        .find(|b: &Value| b["invocation_id"] == r["invocation_id"])
        .expect("the invocation's entry");
    let wasm = std::fs::read(guest("text-tools")).unwrap();
    assert_eq!(
        entry["digest"].as_str(),
        Some(toolhost::audit::canonical::sha256_hex(&wasm).as_str()),
        "{entry}"
    );
}
