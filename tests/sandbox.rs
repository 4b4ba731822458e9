//! Hostile guests are contained with the right error kind, and the same host
//! then serves the next invocation correctly.

mod common;

use common::{call, host, tool};
use serde_json::json;
use std::time::Duration;
use toolhost::{ErrorKind, Limits};

/// Run `function` of the hostile guest; assert it fails with `kind`; then
/// assert the same host still serves a normal call.
async fn contained(
    function: &str,
    args: serde_json::Value,
    limits: Limits,
    kind: ErrorKind,
) -> toolhost::Outcome {
    let host = host();
    let hostile = tool("hostile");
    let mut c = call(function, args);
    c.limits = limits;
    let outcome = host.invoke(&hostile, &c).await;
    assert!(!outcome.ok, "{function} should fail, got {outcome:?}");
    assert_eq!(
        outcome.error_kind(),
        Some(kind),
        "{function}: {:?}",
        outcome.error
    );
    let next = host
        .invoke(&hostile, &call("echo", json!({"s": "still here"})))
        .await;
    assert!(next.ok, "host did not recover after {function}: {next:?}");
    assert_eq!(next.result, Some(json!("still here")));
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_runs_out_of_fuel() {
    let limits = Limits {
        fuel: Some(50_000_000),
        ..Limits::default()
    };
    let out = contained("spin", json!({}), limits, ErrorKind::FuelExhausted).await;
    assert_eq!(out.usage.fuel, 50_000_000, "fuel used is reported");
    assert!(out.error.unwrap().message.contains("50000000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_with_unlimited_fuel_hits_the_deadline() {
    let limits = Limits {
        fuel: None,
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let out = contained("spin", json!({}), limits, ErrorKind::Timeout).await;
    assert!(
        out.usage.wall_ms >= 300 && out.usage.wall_ms < 5_000,
        "{:?}",
        out.usage
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_is_memory_limit_not_trap() {
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let out = contained("alloc-forever", json!({}), limits, ErrorKind::MemoryLimit).await;
    assert!(out.usage.memory_peak_bytes <= 16 << 20, "{:?}", out.usage);
    assert!(out.usage.memory_peak_bytes > 8 << 20, "{:?}", out.usage);
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_is_stack_overflow() {
    contained(
        "recurse",
        json!({"depth": 100_000_000u64}),
        Limits::default(),
        ErrorKind::StackOverflow,
    )
    .await;
    // Shallow recursion is fine.
    let ok = host()
        .invoke(&tool("hostile"), &call("recurse", json!({"depth": 100})))
        .await;
    assert_eq!(ok.result, Some(json!(100)));
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_return_value_is_output_too_large() {
    let limits = Limits {
        max_output_bytes: 1 << 20,
        ..Limits::default()
    };
    contained(
        "huge-output",
        json!({"bytes": 4_000_000}),
        limits.clone(),
        ErrorKind::OutputTooLarge,
    )
    .await;
    let mut small = call("huge-output", json!({"bytes": 1000}));
    small.limits = limits;
    let ok = host().invoke(&tool("hostile"), &small).await;
    assert_eq!(ok.result, Some(json!("x".repeat(1000))));
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_flood_is_kept_truncated_and_marked() {
    let mut c = call("flood-stdout", json!({"bytes": 5_000_000}));
    c.limits.max_stdio_bytes = 10_000;
    let out = host().invoke(&tool("hostile"), &c).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.result, Some(json!(5_000_000)));
    assert_eq!(out.stdout.len(), 10_000);
    assert!(out.stdout.bytes().all(|b| b == b'A'));
    assert!(out.stdout_truncated);
    assert_eq!(out.stderr, "flooded 5000000 bytes\n");
    assert!(!out.stderr_truncated);
}

#[tokio::test(flavor = "multi_thread")]
async fn sleeping_forever_in_a_host_call_hits_the_deadline() {
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let out = contained("sleep-forever", json!({}), limits, ErrorKind::Timeout).await;
    assert!(out.error.unwrap().message.contains("300ms"));
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_panic_is_a_trap_with_its_message() {
    let out = contained(
        "panic",
        json!({"message": "kaboom 42"}),
        Limits::default(),
        ErrorKind::Trap,
    )
    .await;
    assert!(out.error.unwrap().message.contains("kaboom 42"));
    assert!(out.stderr.contains("kaboom 42"));
}

#[tokio::test(flavor = "multi_thread")]
async fn host_files_are_invisible() {
    let out = host()
        .invoke(
            &tool("hostile"),
            &call("read-file", json!({"path": "/etc/passwd"})),
        )
        .await;
    assert!(out.ok, "{out:?}");
    let result = out.result.unwrap();
    assert!(result.get("err").is_some(), "{result}");
    assert!(!result.to_string().contains("root:"));
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = host()
        .invoke(
            &tool("hostile"),
            &call("read-file", json!({"path": manifest})),
        )
        .await;
    assert!(out.result.unwrap().get("err").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn host_environment_is_invisible() {
    // The test process's own environment (PATH, HOME, CARGO_*) must not leak.
    assert!(std::env::var("PATH").is_ok());
    let out = host()
        .invoke(&tool("hostile"), &call("read-env", json!({})))
        .await;
    assert_eq!(out.result, Some(json!([])));
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_tcp_to_loopback_is_denied_and_recorded() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let out = host()
        .invoke(
            &tool("hostile"),
            &call("tcp-connect", json!({"addr": addr.to_string()})),
        )
        .await;
    assert!(out.ok, "{out:?}");
    let result = out.result.unwrap();
    assert!(result.get("err").is_some(), "connected? {result}");
    assert!(!out.outbound.is_empty());
    assert!(out.outbound.iter().all(|e| !e.allowed));
    assert!(listener.accept().is_err(), "the guest reached the listener");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_is_denied_without_a_grant() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://127.0.0.1:{port}/orders?token=secret");
    let out = host()
        .invoke(&tool("http-json"), &call("get-json", json!({"url": url})))
        .await;
    assert!(out.ok, "the tool sees a denial it can handle: {out:?}");
    let err = out.result.unwrap()["err"].as_str().unwrap().to_string();
    assert!(err.contains("HttpRequestDenied"), "{err}");
    assert_eq!(out.outbound.len(), 1);
    let event = serde_json::to_value(&out.outbound[0]).unwrap();
    assert_eq!(event["capability"], "http");
    assert_eq!(event["host"], "127.0.0.1");
    assert_eq!(event["port"], port);
    assert_eq!(
        event["path"], "/orders",
        "the query never reaches the record"
    );
    assert_eq!(event["allowed"], false);
    assert!(listener.accept().is_err(), "the request left the host");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_survives_between_invocations() {
    let host = host();
    let hostile = tool("hostile");
    for _ in 0..3 {
        let out = host.invoke(&hostile, &call("bump", json!({}))).await;
        assert_eq!(out.result, Some(json!(1)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_is_deterministic() {
    let host = host();
    let text = tool("text-tools");
    // (Not `top-words`: its HashMap is seeded from wasi:random, so its work varies.)
    let c = call(
        "slugify",
        json!({"text": "Agents Act: Refunds, PRs & Secrets"}),
    );
    let a = host.invoke(&text, &c).await;
    let b = host.invoke(&text, &c).await;
    assert_eq!(a.result, Some(json!("agents-act-refunds-prs-secrets")));
    assert!(a.usage.fuel > 0);
    assert_eq!(a.usage.fuel, b.usage.fuel);
    assert!(a.usage.memory_peak_bytes > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn attacks_and_normal_calls_interleave() {
    let host = std::sync::Arc::new(host());
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let hostile = tool("hostile");
            let (f, args, kind) = match i % 4 {
                0 => ("spin", json!({}), Some(ErrorKind::FuelExhausted)),
                1 => ("alloc-forever", json!({}), Some(ErrorKind::MemoryLimit)),
                2 => ("panic", json!({"message": "x"}), Some(ErrorKind::Trap)),
                _ => ("echo", json!({"s": format!("n{i}")}), None),
            };
            let mut c = call(f, args);
            c.limits.fuel = Some(20_000_000);
            c.limits.memory_bytes = 8 << 20;
            let out = host.invoke(&hostile, &c).await;
            assert_eq!(out.error_kind(), kind, "{f}: {:?}", out.error);
            if kind.is_none() {
                assert_eq!(out.result, Some(json!(format!("n{i}"))));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn top_words_counts() {
    let c = call(
        "top-words",
        json!({"text": "the cat and the hat and the bat", "n": 2}),
    );
    let out = host().invoke(&tool("text-tools"), &c).await;
    assert_eq!(out.result, Some(json!([["the", 3], ["and", 2]])));
}

#[tokio::test(flavor = "multi_thread")]
async fn structured_logs_are_captured() {
    let out = host()
        .invoke(
            &tool("refund"),
            &call("lookup-order", json!({"order-id": "ord_1002"})),
        )
        .await;
    assert!(out.ok);
    assert_eq!(out.logs.len(), 1);
    assert_eq!(out.logs[0].level, "info");
    assert_eq!(out.logs[0].message, "lookup ord_1002");
}

#[tokio::test(flavor = "multi_thread")]
async fn hoarding_host_resources_is_capped() {
    let limits = Limits {
        max_host_resources: 1000,
        ..Limits::default()
    };
    let out = contained(
        "hoard-pollables",
        json!({"n": 1_000_000}),
        limits,
        ErrorKind::Trap,
    )
    .await;
    assert!(
        out.error.unwrap().message.contains("resource"),
        "names the cause"
    );
    // Under the cap, it is allowed.
    let ok = host()
        .invoke(
            &tool("hostile"),
            &call("hoard-pollables", json!({"n": 100})),
        )
        .await;
    assert_eq!(ok.result, Some(json!(100)));
}
