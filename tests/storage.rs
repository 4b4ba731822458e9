//! The backend conformance suite: the same tests, run against every
//! storage backend (in memory, SQLite, PostgreSQL: a real server, from
//! `TOOLHOST_TEST_DATABASE_URL`, required in CI). A backend is correct when it passes all of them.

mod common;

use serde_json::json;
use std::sync::Arc;
use toolhost::audit::AuditLog;
use toolhost::ids::{InvocationId, TenantId};
use toolhost::storage::prelude::*;
use toolhost::storage::*;

/// The backends under test, each fresh.
async fn backends(tag: &str) -> Vec<(&'static str, Arc<dyn Storage>, std::path::PathBuf)> {
    let dir = common::tempdir(tag);
    let sqlite: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir.join("sqlite"))
            .await
            .unwrap(),
    );
    let memory: Arc<dyn Storage> = Arc::new(toolhost::storage::memory::MemoryStorage::new());
    let mut all = vec![
        ("memory", memory, dir.join("memory")),
        ("sqlite", sqlite, dir.join("sqlite")),
    ];
    if let Some(url) = common::pg::fresh_database(tag).await {
        let postgres: Arc<dyn Storage> = Arc::new(
            toolhost::storage::postgres::PostgresStorage::open(
                &toolhost::storage::postgres::PostgresOptions::new(&url),
            )
            .await
            .unwrap(),
        );
        all.push(("postgres", postgres, dir.join("postgres")));
    }
    all
}

fn run(id: &str, owner: &str, lease_until: i64) -> NewRun {
    NewRun {
        id: id.into(),
        tenant: "acme".into(),
        tool: "t".into(),
        function: "f".into(),
        version: Some("1".into()),
        workflow: None,
        task_id: Some("task".into()),
        principal: Some("k".into()),
        transport: "http".into(),
        idempotency_key: None,
        created_ms: 1,
        owner: owner.into(),
        lease_until,
    }
}

fn line(metric: &str, amount: i64, limit: Option<i64>) -> Charge {
    Charge {
        scope: "task:acme/t".into(),
        window: "all".into(),
        metric: toolhost::budget::Metric::parse(metric).unwrap(),
        amount,
        limit,
    }
}

fn record(id: &str, status: &str) -> InvocationRecord {
    InvocationRecord {
        id: id.into(),
        tenant: "acme".into(),
        tool: "t".into(),
        function: "f".into(),
        version: Some("1".into()),
        workflow: None,
        task_id: Some("task".into()),
        principal: Some("k".into()),
        status: toolhost::storage::Status::parse(status).unwrap(),
        error_kind: None,
        created_ms: 1,
        response: json!({"invocation_id": id, "status": status, "tool": "t", "function": "f",
                         "usage": {"fuel": 0, "wall_ms": 0, "memory_peak_bytes": 0}})
        .to_string(),
    }
}

async fn reserved(s: &Arc<dyn Storage>, metric: &str) -> (i64, i64) {
    s.budget_usage(&"task:acme/t".into())
        .await
        .unwrap()
        .iter()
        .find(|u| u.metric.as_str() == metric)
        .map_or((0, 0), |u| (u.used, u.reserved))
}

async fn audit(s: &Arc<dyn Storage>, dir: &std::path::Path) -> Arc<AuditLog> {
    AuditLog::open(s.clone(), dir).await.unwrap()
}

/// Admissions arriving together are decided together, yet each stays all
/// or nothing: one refused on its second line reserves nothing on its
/// first, and the refusal names the line that would pass its limit.
#[tokio::test(flavor = "multi_thread")]
async fn admissions_are_each_all_or_nothing_under_concurrency() {
    for (name, s, _) in backends("conf-admit").await {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.invocation_admit(Admit {
                    run: run(&format!("inv_{i}"), "hst_a", 1000),
                    worst: vec![line("tool_calls", 1, Some(100)), line("fuel", 2, Some(5))],
                    existing: false,
                })
                .await
                .unwrap()
            }));
        }
        let mut granted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => granted += 1,
                Err(Refused::Exceeded(e)) => {
                    assert_eq!((e.metric.as_str(), e.limit, e.requested), ("fuel", 5, 2));
                    assert_eq!(e.used + e.reserved, 4, "{name}");
                }
                Err(other) => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            granted, 2,
            "{name}: 2 + 2 fit under 5; a third would pass it"
        );
        assert_eq!(reserved(&s, "fuel").await, (0, 4), "{name}");
        assert_eq!(
            reserved(&s, "tool_calls").await,
            (0, 2),
            "{name}: refused reserved nothing"
        );
        // Only admitted calls have rows, each running under its owner.
        let running = s.invocation_expired(i64::MAX, 100).await.unwrap();
        assert_eq!(running.len(), 2, "{name}");
        assert!(running.iter().all(|l| l.admitted && l.run.owner == "hst_a"));
    }
}

/// What an admission reserves is decided by the shared rule on every
/// backend: a worst case naming a line twice reserves (and is checked
/// against) the sum; the same new invocation id admitted twice at once is
/// admitted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_line_named_twice_reserves_the_sum_and_an_id_is_admitted_once() {
    for (name, s, _) in backends("conf-twice").await {
        let twice = |id: &str, a: i64, b: i64| Admit {
            run: run(id, "hst_a", 1000),
            worst: vec![line("fuel", a, Some(10)), line("fuel", b, Some(10))],
            existing: false,
        };
        match s.invocation_admit(twice("inv_big", 6, 6)).await.unwrap() {
            Err(Refused::Exceeded(e)) => {
                assert_eq!((e.limit, e.requested), (10, 12), "{name}");
            }
            other => panic!("{name}: 6 + 6 on one line passes 10: {other:?}"),
        }
        assert_eq!(reserved(&s, "fuel").await, (0, 0), "{name}");
        assert_eq!(
            s.invocation_admit(twice("inv_fits", 4, 5)).await.unwrap(),
            Ok(()),
            "{name}"
        );
        assert_eq!(reserved(&s, "fuel").await, (0, 9), "{name}");

        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.invocation_admit(Admit {
                    run: run("inv_same", "hst_a", 1000),
                    worst: vec![line("tool_calls", 1, Some(100))],
                    existing: false,
                })
                .await
                .unwrap()
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        assert_eq!(
            answers.iter().filter(|a| a.is_ok()).count(),
            1,
            "{name}: {answers:?}"
        );
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Ok(()) | Err(Refused::Taken))),
            "{name}: {answers:?}"
        );
        assert_eq!(
            reserved(&s, "tool_calls").await,
            (0, 1),
            "{name}: only the admitted one reserved"
        );
    }
}

/// Ending settles by the row's own charges: its reservation released, what
/// it used charged; a lost one is charged its worst case.
#[tokio::test(flavor = "multi_thread")]
async fn an_end_settles_by_the_rows_own_charges() {
    for (name, s, dir) in backends("conf-end").await {
        let log = audit(&s, &dir).await;
        let worst = vec![
            line("tool_calls", 1, Some(10)),
            line("fuel", 50, Some(1000)),
        ];
        for id in ["inv_a", "inv_b"] {
            s.invocation_admit(Admit {
                run: run(id, "hst_a", 1000),
                worst: worst.clone(),
                existing: false,
            })
            .await
            .unwrap()
            .unwrap();
        }
        assert_eq!(reserved(&s, "fuel").await, (0, 100), "{name}");
        // a: ended by its owner, having used 7 fuel.
        let used = vec![line("tool_calls", 1, Some(10)), line("fuel", 7, Some(1000))];
        let work = Work {
            end: Some(End {
                record: record("inv_a", "ok"),
                expect: Expect::Mine {
                    owner: "hst_a".into(),
                },
                used: Some(used),
            }),
            ..Work::default()
        };
        log.commit(vec![("acme".into(), 2, json!({"n": "a"}))], work)
            .await
            .unwrap();
        assert_eq!(reserved(&s, "fuel").await, (7, 50), "{name}");
        // b: lost (its lease ran out at 1000): the reaper charges the worst.
        let work = Work {
            end: Some(End {
                record: record("inv_b", "error"),
                expect: Expect::Expired { now_ms: 2000 },
                used: None,
            }),
            ..Work::default()
        };
        log.commit(vec![("acme".into(), 3, json!({"n": "b"}))], work)
            .await
            .unwrap();
        assert_eq!(reserved(&s, "fuel").await, (57, 0), "{name}");
        assert_eq!(reserved(&s, "tool_calls").await, (2, 0), "{name}");
        let rec = s
            .invocation_get(&"acme".into(), &"inv_b".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.status, toolhost::storage::Status::Error, "{name}");
    }
}

/// Ledgers saturate at the largest integer instead of overflowing: an
/// operator's "unlimited" (a fuel limit of 2^64 - 1 under a budget of
/// i64::MAX) reserves and charges i64::MAX per call, and several such calls
/// leave a ledger that still reads, settles and admits, never an integer
/// the database turned into a float (`corrupt`) or refused (`out of range`).
#[tokio::test(flavor = "multi_thread")]
async fn ledgers_saturate_instead_of_overflowing() {
    for (name, s, dir) in backends("conf-saturate").await {
        let log = audit(&s, &dir).await;
        let worst = vec![line("fuel", i64::MAX, Some(i64::MAX))];
        for id in ["inv_a", "inv_b", "inv_c"] {
            s.invocation_admit(Admit {
                run: run(id, "hst_a", 1000),
                worst: worst.clone(),
                existing: false,
            })
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {id}: {e:?}"));
        }
        assert_eq!(reserved(&s, "fuel").await, (0, i64::MAX), "{name}");
        // Two lost (the worst charged), one ended by its owner.
        for (i, id) in ["inv_a", "inv_b"].into_iter().enumerate() {
            let work = Work {
                end: Some(End {
                    record: record(id, "error"),
                    expect: Expect::Expired { now_ms: 2000 },
                    used: None,
                }),
                ..Work::default()
            };
            log.commit(vec![("acme".into(), 2 + i as i64, json!({"n": id}))], work)
                .await
                .unwrap_or_else(|e| panic!("{name}: {id}: {e}"));
        }
        let work = Work {
            end: Some(End {
                record: record("inv_c", "ok"),
                expect: Expect::Mine {
                    owner: "hst_a".into(),
                },
                used: Some(vec![line("fuel", 5, Some(i64::MAX))]),
            }),
            ..Work::default()
        };
        log.commit(vec![("acme".into(), 4, json!({"n": "c"}))], work)
            .await
            .unwrap_or_else(|e| panic!("{name}: inv_c: {e}"));
        let (used, reserved_now) = reserved(&s, "fuel").await;
        assert_eq!(used, i64::MAX, "{name}");
        assert!(reserved_now >= 0, "{name}: {reserved_now}");
    }
}

/// Two movers of one row never both win: the end whose precondition no
/// longer holds is refused (`conflict`) and writes nothing — no entries, no
/// settlement — while the other works of the same commit go through.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_end_is_refused_whole_and_alone() {
    for (name, s, dir) in backends("conf-stale").await {
        let log = audit(&s, &dir).await;
        s.invocation_admit(Admit {
            run: run("inv_a", "hst_a", 1000),
            worst: vec![line("fuel", 10, Some(100))],
            existing: false,
        })
        .await
        .unwrap()
        .unwrap();
        // Not expired yet: the reaper's end is refused.
        let reap = |now_ms| Work {
            end: Some(End {
                record: record("inv_a", "error"),
                expect: Expect::Expired { now_ms },
                used: None,
            }),
            ..Work::default()
        };
        let refused = log
            .commit(vec![("acme".into(), 1, json!({"reap": 1}))], reap(500))
            .await
            .unwrap_err();
        assert_eq!(refused.kind, toolhost::ErrorKind::Conflict, "{name}");
        // Another host's end: refused too.
        let other = Work {
            end: Some(End {
                record: record("inv_a", "ok"),
                expect: Expect::Mine {
                    owner: "hst_b".into(),
                },
                used: Some(vec![]),
            }),
            ..Work::default()
        };
        let (a, b) = tokio::join!(
            log.commit(vec![("acme".into(), 2, json!({"other": 1}))], other),
            log.append(vec![("acme".into(), 2, json!({"bystander": 1}))]),
        );
        assert_eq!(a.unwrap_err().kind, toolhost::ErrorKind::Conflict, "{name}");
        assert_eq!(b.unwrap().len(), 1, "{name}: the bystander committed");
        assert_eq!(
            reserved(&s, "fuel").await,
            (0, 10),
            "{name}: nothing settled"
        );
        // The renewal moves the lease; the reaper still cannot take it.
        assert_eq!(
            s.invocation_renew("hst_a", vec!["inv_a".into()], 5000)
                .await
                .unwrap(),
            1,
            "{name}"
        );
        assert_eq!(
            s.invocation_renew("hst_b", vec!["inv_a".into()], 9000)
                .await
                .unwrap(),
            0,
            "{name}: only the owner renews"
        );
        assert!(log.commit(vec![], reap(2000)).await.is_err(), "{name}");
        assert!(s.invocation_expired(2000, 10).await.unwrap().is_empty());
        // Past the renewed lease it can, once.
        log.commit(vec![("acme".into(), 3, json!({"reap": 2}))], reap(6000))
            .await
            .unwrap();
        assert!(
            log.commit(vec![], reap(7000)).await.is_err(),
            "{name}: once"
        );
        // The chain holds exactly what committed.
        let entries = s.audit_read("acme", 0, 100).await.unwrap();
        let bodies: Vec<&str> = entries.iter().map(|e| e.body.as_str()).collect();
        assert_eq!(bodies, [r#"{"bystander":1}"#, r#"{"reap":2}"#], "{name}");
        let key = toolhost::audit::verify::parse_key(&log.public_key()).unwrap();
        let report = toolhost::audit::verify::verify(&s, &key, None)
            .await
            .unwrap();
        assert!(report.ok, "{name}: {report:?}");
    }
}

/// The idempotency state machine: start (the row is written running and
/// unadmitted), in progress, mismatch, replay; a key whose invocation was
/// forgotten before it ran starts again.
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_follow_their_invocation() {
    for (name, s, dir) in backends("conf-idem").await {
        let log = audit(&s, &dir).await;
        let begin = key_k1;
        assert_eq!(
            s.idempotency_begin(begin("fp", "inv_1")).await.unwrap(),
            IdempotencyBegin::Started,
            "{name}"
        );
        let rows = s
            .invocation_running(&InvocationId::from("inv_1"))
            .await
            .unwrap()
            .unwrap();
        assert!(!rows.admitted, "{name}: written, not admitted");
        assert_eq!(
            s.idempotency_begin(begin("fp", "inv_2")).await.unwrap(),
            IdempotencyBegin::InProgress,
            "{name}"
        );
        assert_eq!(
            s.idempotency_begin(begin("other", "inv_2")).await.unwrap(),
            IdempotencyBegin::Mismatch,
            "{name}"
        );
        // Forgotten before it ran (its host died): the key starts again.
        assert!(
            !s.invocation_forget(
                &InvocationId::from("inv_1"),
                Expect::Expired { now_ms: 500 }
            )
            .await
            .unwrap(),
            "{name}: the lease has not run out"
        );
        assert!(
            s.invocation_forget(
                &InvocationId::from("inv_1"),
                Expect::Expired { now_ms: 2000 }
            )
            .await
            .unwrap(),
            "{name}"
        );
        assert_eq!(
            s.idempotency_begin(begin("fp", "inv_3")).await.unwrap(),
            IdempotencyBegin::Started,
            "{name}"
        );
        // Admitted (it may run): never forgotten.
        s.invocation_admit(Admit {
            run: NewRun {
                idempotency_key: Some("k1".into()),
                ..run("inv_3", "hst_a", 1000)
            },
            worst: vec![],
            existing: true,
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            !s.invocation_forget(
                &InvocationId::from("inv_3"),
                Expect::Expired { now_ms: 2000 }
            )
            .await
            .unwrap(),
            "{name}"
        );
        // Its end answers the key.
        let work = Work {
            end: Some(End {
                record: record("inv_3", "ok"),
                expect: Expect::Mine {
                    owner: "hst_a".into(),
                },
                used: Some(vec![]),
            }),
            idempotency: vec![IdempotencyDone {
                tenant: "acme".into(),
                key: "k1".into(),
                invocation_id: "inv_3".into(),
                response: "{\"answer\":1}".into(),
            }],
            ..Work::default()
        };
        log.commit(vec![("acme".into(), 20, json!({"n": 1}))], work)
            .await
            .unwrap();
        assert_eq!(
            s.idempotency_begin(begin("fp", "inv_4")).await.unwrap(),
            IdempotencyBegin::Replay {
                response: "{\"answer\":1}".into()
            },
            "{name}"
        );
    }
}

fn approval(id: &str, invocation_id: &str, expires_ms: i64) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        tenant: "acme".into(),
        invocation_id: invocation_id.into(),
        status: toolhost::storage::ApprovalStatus::Pending,
        tool: "t".into(),
        function: "f".into(),
        version: Some("1".into()),
        workflow: None,
        task_id: None,
        args: "{\"x\":1}".into(),
        args_redacted: "{}".into(),
        args_sha256: "h".into(),
        rule: "r".into(),
        requester: Some("k".into()),
        created_ms: 1,
        expires_ms,
        decided_by: None,
        decided_ms: None,
        reason: None,
        callback_url: Some("http://127.0.0.1:9/cb".into()),
    }
}

/// Of concurrent decisions exactly one wins; approving hands the waiting
/// row to the approver's host; expiry only after the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn one_decision_wins_and_approval_hands_the_row_over() {
    for (name, s, dir) in backends("conf-decide").await {
        let log = audit(&s, &dir).await;
        // Park two invocations for approval.
        for (inv, apr) in [("inv_1", "apr_1"), ("inv_2", "apr_2")] {
            let work = Work {
                end: Some(End {
                    record: record(inv, "pending_approval"),
                    expect: Expect::Mine {
                        owner: "hst_a".into(),
                    },
                    used: Some(vec![]),
                }),
                approvals: vec![approval(apr, inv, 1000)],
                ..Work::default()
            };
            log.commit(vec![("acme".into(), 1, json!({"park": inv}))], work)
                .await
                .unwrap();
        }
        let decide = |apr: &str, status: &str, now_ms, run: Option<(String, i64)>| Work {
            decide: Some(Decision {
                tenant: "acme".into(),
                approval_id: apr.into(),
                status: toolhost::storage::ApprovalStatus::parse(status).unwrap(),
                decided_by: Some("boss".into()),
                reason: None,
                now_ms,
                run,
            }),
            ..Work::default()
        };
        let mut tasks = Vec::new();
        for i in 0..10 {
            let log = log.clone();
            let status = if i % 2 == 0 { "approved" } else { "denied" };
            let run = (status == "approved").then(|| (format!("hst_{i}"), 5000));
            let work = decide("apr_1", status, 10, run);
            tasks.push(tokio::spawn(async move {
                log.commit(vec![("acme".into(), 2, json!({"d": i}))], work)
                    .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => wins += 1,
                Err(e) => assert_eq!(e.kind, toolhost::ErrorKind::Conflict, "{name}"),
            }
        }
        assert_eq!(wins, 1, "{name}");
        let a = s
            .approval_get(&"acme".into(), &"apr_1".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.args, "", "{name}: the arguments are erased once decided");
        if a.status == toolhost::storage::ApprovalStatus::Approved {
            let row = s
                .invocation_running(&InvocationId::from("inv_1"))
                .await
                .unwrap()
                .unwrap();
            assert!(row.run.owner.starts_with("hst_"), "{name}: {row:?}");
            assert_eq!(row.run.lease_until, 5000, "{name}");
            assert!(!row.admitted, "{name}");
        } else {
            assert_eq!(
                a.status,
                toolhost::storage::ApprovalStatus::Denied,
                "{name}"
            );
        }
        // Expiry: not before its deadline, then once.
        assert!(
            log.commit(vec![], decide("apr_2", "expired", 999, None))
                .await
                .is_err(),
            "{name}"
        );
        let due = s.approvals_due(1000, 10).await.unwrap();
        assert_eq!(
            due.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["apr_2"],
            "{name}"
        );
        log.commit(vec![], decide("apr_2", "expired", 1000, None))
            .await
            .unwrap();
        assert!(
            s.approvals_due(1000, 10).await.unwrap().is_empty(),
            "{name}"
        );
        // Approving past the deadline is refused.
        assert!(
            log.commit(
                vec![],
                decide("apr_2", "approved", 2000, Some(("h".into(), 1)))
            )
            .await
            .is_err(),
            "{name}"
        );
    }
}

/// The outbox: written with its work, claimed by one host at a time,
/// retried when due, done once delivered.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_messages_are_claimed_once_and_retried() {
    for (name, s, dir) in backends("conf-outbox").await {
        let log = audit(&s, &dir).await;
        let message = OutboxMessage {
            id: 0,
            tenant: "acme".into(),
            invocation_id: "inv_1".into(),
            approval_id: Some("apr_1".into()),
            url: "http://127.0.0.1:9/cb".into(),
            created_ms: 100,
            attempts: 0,
            state: "pending".into(),
            last_error: None,
            delivered_ms: None,
        };
        let work = Work {
            outbox: vec![message],
            ..Work::default()
        };
        log.commit(vec![("acme".into(), 1, json!({"o": 1}))], work)
            .await
            .unwrap();
        assert!(
            s.outbox_claim("h1", 99, 1000, 10).await.unwrap().is_empty(),
            "{name}: not due"
        );
        let claimed = s.outbox_claim("h1", 100, 1000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "{name}");
        assert!(
            s.outbox_claim("h2", 200, 1200, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}: claimed"
        );
        let id = claimed[0].id;
        s.outbox_attempt(
            id,
            "h1",
            300,
            Attempt::Retry {
                next_ms: 2000,
                error: "503".into(),
            },
        )
        .await
        .unwrap();
        assert!(
            s.outbox_claim("h2", 1500, 3000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}: backing off"
        );
        let again = s.outbox_claim("h2", 2000, 3000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{name}");
        // h1's claim is gone: its report is ignored.
        s.outbox_attempt(id, "h1", 2100, Attempt::Delivered { status: 200 })
            .await
            .unwrap();
        s.outbox_attempt(id, "h2", 2100, Attempt::Delivered { status: 200 })
            .await
            .unwrap();
        let m = s.outbox_for("acme", "inv_1").await.unwrap();
        assert_eq!(m[0].state, "delivered", "{name}");
        assert_eq!(m[0].attempts, 2, "{name}");
        assert!(
            s.outbox_claim("h3", 999_999, 1_000_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
    }
}

/// (id, tenant, tool, function, workflow, status, kind, created, wall, cost)
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    i64,
    Option<i64>,
    Option<i64>,
);

/// What the reports and the filtered listing read: a tenant's invocations
/// in `[since, until)` by creation time, newest first, filtered by tool,
/// function and workflow, with the wall time and cost from the stored
/// response (none where it has none); and the listing's error kind and
/// time filters.
#[tokio::test(flavor = "multi_thread")]
async fn samples_and_time_filters_read_the_records() {
    for (name, s, dir) in backends("conf-samples").await {
        let log = audit(&s, &dir).await;
        // (id, tenant, tool, function, workflow, status, kind, created, wall, cost)
        let rows: &[Row] = &[
            (
                "inv_1",
                "acme",
                "a",
                "f",
                None,
                "ok",
                None,
                100,
                Some(5),
                Some(7),
            ),
            (
                "inv_2",
                "acme",
                "a",
                "g",
                Some("w"),
                "error",
                Some("trap"),
                200,
                Some(9),
                Some(3),
            ),
            (
                "inv_3",
                "acme",
                "b",
                "f",
                Some("w"),
                "refused",
                Some("policy_denied"),
                300,
                None,
                None,
            ),
            (
                "inv_4",
                "other",
                "a",
                "f",
                None,
                "ok",
                None,
                250,
                Some(1),
                Some(1),
            ),
            (
                "inv_5",
                "acme",
                "a",
                "f",
                None,
                "ok",
                None,
                400,
                Some(11),
                Some(2),
            ),
            // Written after inv_5 but created earlier: by time, not position.
            (
                "inv_6",
                "acme",
                "a",
                "f",
                None,
                "ok",
                None,
                150,
                Some(2),
                Some(2),
            ),
        ];
        for (i, (id, tenant, tool, function, workflow, status, kind, created, wall, cost)) in
            rows.iter().enumerate()
        {
            let mut response = json!({"invocation_id": id, "status": status, "tool": tool,
                "function": function, "usage": {"fuel": 0, "wall_ms": 0, "memory_peak_bytes": 0}});
            match wall {
                Some(w) => response["usage"]["wall_ms"] = json!(w),
                None => {
                    response.as_object_mut().unwrap().remove("usage");
                }
            }
            if let Some(c) = cost {
                response["charged"] = json!({"tool_calls": 1, "cost_micro_usd": c});
            }
            let rec = InvocationRecord {
                id: (*id).into(),
                tenant: (*tenant).into(),
                tool: tool.to_string(),
                function: function.to_string(),
                version: None,
                workflow: workflow.map(str::to_string),
                task_id: Some(format!("t{}", i % 2)),
                principal: None,
                status: toolhost::storage::Status::parse(status).unwrap(),
                error_kind: kind.map(str::to_string),
                created_ms: *created,
                response: response.to_string(),
            };
            let work = Work {
                end: Some(End {
                    record: rec,
                    expect: Expect::Mine {
                        owner: "hst_a".into(),
                    },
                    used: Some(vec![]),
                }),
                ..Work::default()
            };
            log.commit(vec![(tenant.to_string(), *created, json!({"n": i}))], work)
                .await
                .unwrap();
        }
        let samples = |f: SampleFilter| {
            let s = s.clone();
            async move {
                s.invocation_samples(&TenantId::from("acme"), f)
                    .await
                    .unwrap()
            }
        };
        let all = SampleFilter {
            since_ms: 0,
            until_ms: 1000,
            limit: 100,
            ..SampleFilter::default()
        };
        let got = samples(all.clone()).await;
        let times: Vec<i64> = got.iter().map(|x| x.created_ms).collect();
        assert_eq!(
            times,
            [400, 300, 200, 150, 100],
            "{name}: newest first, one tenant"
        );
        assert_eq!(got[0].wall_ms, Some(11), "{name}");
        assert_eq!(got[0].cost_micro_usd, Some(2), "{name}");
        assert_eq!(got[1].wall_ms, None, "{name}: no usage");
        assert_eq!(got[1].cost_micro_usd, None, "{name}: nothing charged");
        assert_eq!(
            got[1].error_kind.as_deref(),
            Some("policy_denied"),
            "{name}"
        );
        assert_eq!(got[2].workflow.as_deref(), Some("w"), "{name}");
        // The range is [since, until).
        let r = samples(SampleFilter {
            since_ms: 150,
            until_ms: 400,
            ..all.clone()
        })
        .await;
        assert_eq!(
            r.iter().map(|x| x.created_ms).collect::<Vec<_>>(),
            [300, 200, 150],
            "{name}"
        );
        // Filters and the limit.
        let r = samples(SampleFilter {
            tool: Some("a".into()),
            function: Some("f".into()),
            ..all.clone()
        })
        .await;
        assert_eq!(
            r.iter().map(|x| x.created_ms).collect::<Vec<_>>(),
            [400, 150, 100],
            "{name}"
        );
        let r = samples(SampleFilter {
            workflow: Some("w".into()),
            ..all.clone()
        })
        .await;
        assert_eq!(r.len(), 2, "{name}");
        let r = samples(SampleFilter {
            limit: 2,
            ..all.clone()
        })
        .await;
        assert_eq!(
            r.iter().map(|x| x.created_ms).collect::<Vec<_>>(),
            [400, 300],
            "{name}"
        );
        // The listing's new filters.
        let list = |f: InvocationFilter| {
            let s = s.clone();
            async move {
                s.invocation_list(
                    &TenantId::from("acme"),
                    InvocationFilter { limit: 100, ..f },
                )
                .await
                .unwrap()
                .into_iter()
                .map(|(_, r)| r.id)
                .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(InvocationFilter {
                error_kind: Some("trap".into()),
                ..InvocationFilter::default()
            })
            .await,
            ["inv_2"],
            "{name}"
        );
        assert_eq!(
            list(InvocationFilter {
                since_ms: Some(150),
                until_ms: Some(400),
                ..InvocationFilter::default()
            })
            .await,
            ["inv_6", "inv_3", "inv_2"],
            "{name}: by position, within the times"
        );
    }
}

/// One PostgreSQL store on a fresh database, its audit log signing with a
/// fixed key, and the database's URL (to edit rows by hand).
async fn pg_audit_log(tag: &str) -> Option<(Arc<AuditLog>, String)> {
    let (a, _, url) = two_replicas(tag).await?;
    let dir = common::tempdir(tag);
    std::fs::write(dir.join("key"), "42".repeat(32)).unwrap();
    let log = AuditLog::open(a, toolhost::audit::KeySource::File(dir.join("key")))
        .await
        .unwrap();
    Some((log, url))
}

/// Two PostgreSQL stores on one database (two replicas), fresh.
async fn two_replicas(tag: &str) -> Option<(Arc<dyn Storage>, Arc<dyn Storage>, String)> {
    use toolhost::storage::postgres::{PostgresOptions, PostgresStorage};
    let url = common::pg::fresh_database(tag).await?;
    let a = PostgresStorage::open(&PostgresOptions::new(&url))
        .await
        .unwrap();
    let b = PostgresStorage::open(&PostgresOptions::new(&url))
        .await
        .unwrap();
    Some((Arc::new(a), Arc::new(b), url))
}

/// Appends from two replicas at once (each batching its own concurrent
/// commits) make one chain per tenant that verifies: no fork, no gap;
/// admissions from both never pass a limit.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_replicas_append_one_chain_and_share_limits() {
    let Some((a, b, _)) = two_replicas("conf-pg-chain").await else {
        return;
    };
    let dir = common::tempdir("conf-pg-chain");
    std::fs::write(dir.join("key"), "42".repeat(32)).unwrap();
    let key = toolhost::audit::KeySource::File(dir.join("key"));
    let la = AuditLog::open(a.clone(), key.clone()).await.unwrap();
    let lb = AuditLog::open(b.clone(), key).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = if i % 2 == 0 { la.clone() } else { lb.clone() };
        tasks.push(tokio::spawn(async move {
            let chain = ["acme", "globex", "initech"][i % 3].to_string();
            log.append(vec![(chain, i as i64, json!({"n": i}))])
                .await
                .unwrap()
        }));
    }
    let mut seqs: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for t in tasks {
        for e in t.await.unwrap() {
            seqs.entry(e.chain).or_default().push(e.seq);
        }
    }
    for (chain, mut s) in seqs {
        s.sort();
        let n = s.len() as i64;
        assert_eq!(s, (1..=n).collect::<Vec<_>>(), "{chain}: no fork, no gap");
    }
    let report = toolhost::audit::verify::verify(&a, la.notary().public_key(), None)
        .await
        .unwrap();
    assert!(report.ok, "{:?}", report);
    assert_eq!(report.entries, 200);

    let mut admits = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        admits.push(tokio::spawn(async move {
            s.invocation_admit(Admit {
                run: run(&format!("inv_{i}"), "hst_a", 1000),
                worst: vec![line("tool_calls", 1, Some(4))],
                existing: false,
            })
            .await
            .unwrap()
        }));
    }
    let mut granted = 0;
    for t in admits {
        granted += usize::from(t.await.unwrap().is_ok());
    }
    assert_eq!(granted, 4, "exactly the limit, across replicas");
    assert_eq!(reserved(&b, "tool_calls").await, (0, 4));
}

/// A replica that wrote a chain head, a budget line and a running row last
/// writes its next batch without reading them first; when another replica
/// moved any of them meanwhile, it must find out and decide on what is
/// there: no limit passed, no chain forked, no row taken back from whoever
/// ended it.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_replica_never_acts_on_what_another_moved() {
    use sqlx::Connection;
    use toolhost::storage::postgres::{PostgresOptions, PostgresStorage};
    let Some((b, _, url)) = two_replicas("conf-pg-stale").await else {
        return;
    };
    let pa = Arc::new(
        PostgresStorage::open(&PostgresOptions::new(&url))
            .await
            .unwrap(),
    );
    let a: Arc<dyn Storage> = pa.clone();
    let dir = common::tempdir("conf-pg-stale");
    std::fs::write(dir.join("key"), "42".repeat(32)).unwrap();
    let key = toolhost::audit::KeySource::File(dir.join("key"));
    let la = AuditLog::open(a.clone(), key.clone()).await.unwrap();
    let lb = AuditLog::open(b.clone(), key).await.unwrap();
    let admit = |s: &Arc<dyn Storage>, id: String, owner: &'static str| {
        let s = s.clone();
        async move {
            s.invocation_admit(Admit {
                run: run(&id, owner, 1000),
                worst: vec![line("tool_calls", 1, Some(10))],
                existing: false,
            })
            .await
            .unwrap()
        }
    };
    // `a` alone for a while: it admits, runs and ends, one at a time.
    for i in 0..4 {
        let id = format!("inv_a{i}");
        admit(&a, id.clone(), "hst_a").await.unwrap();
        let end = Work {
            end: Some(End {
                record: record(&id, "ok"),
                expect: Expect::Mine {
                    owner: "hst_a".into(),
                },
                used: None,
            }),
            ..Work::default()
        };
        let entries = vec![
            ("acme".into(), i, json!({"a": i})),
            ("own".into(), i, json!({"a": i})),
        ];
        la.commit(entries, end).await.unwrap();
    }
    assert_eq!(reserved(&a, "tool_calls").await, (4, 0));
    let (seen, refused) = pa.seen_batches();
    assert!(seen >= 4, "alone, `a` writes as it saw: {seen}");
    assert_eq!(refused, 0);
    // `a` admits one more and keeps it running; then `b` reserves on the
    // same line, appends to the same chain, and ends `a`'s row as lost.
    admit(&a, "inv_held".into(), "hst_a").await.unwrap();
    for i in 0..4 {
        admit(&b, format!("inv_b{i}"), "hst_b").await.unwrap();
    }
    lb.append(vec![("acme".into(), 10, json!({"b": 1}))])
        .await
        .unwrap();
    lb.commit(
        vec![("acme".into(), 11, json!({"reaped": "inv_held"}))],
        Work {
            end: Some(End {
                record: record("inv_held", "error"),
                expect: Expect::Expired { now_ms: 2000 },
                used: None,
            }),
            ..Work::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(reserved(&a, "tool_calls").await, (5, 4));
    // `a`'s end of the row `b` ended is refused, and settles nothing.
    let late = Work {
        end: Some(End {
            record: record("inv_held", "ok"),
            expect: Expect::Mine {
                owner: "hst_a".into(),
            },
            used: Some(vec![]),
        }),
        ..Work::default()
    };
    let refused = la
        .commit(vec![("own".into(), 12, json!({"late": 1}))], late)
        .await
        .unwrap_err();
    assert_eq!(refused.kind, toolhost::ErrorKind::Conflict);
    assert_eq!(reserved(&a, "tool_calls").await, (5, 4));
    // `a` decides on the line as it is (9 of 10), not as it saw it (5).
    let two = a
        .invocation_admit(Admit {
            run: run("inv_c0", "hst_a", 1000),
            worst: vec![line("tool_calls", 2, Some(10))],
            existing: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(two, Err(toolhost::storage::Refused::Exceeded(_))),
        "{two:?}"
    );
    assert!(admit(&a, "inv_c1".into(), "hst_a").await.is_ok());
    assert!(admit(&a, "inv_c2".into(), "hst_a").await.is_err());
    assert_eq!(reserved(&b, "tool_calls").await, (5, 5));
    // And appends after `b`'s entries: one chain.
    la.append(vec![("acme".into(), 13, json!({"a": "after"}))])
        .await
        .unwrap();
    let report = toolhost::audit::verify::verify(&a, la.notary().public_key(), None)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 4 + 4 + 1 + 1 + 1);
    assert!(pa.seen_batches().1 >= 2, "{:?}", pa.seen_batches());

    // A limited line `a` reserves nothing on is still checked: once another
    // replica charged it past its limit, a zero charge is refused.
    let on_z = |amount| Charge {
        scope: "task:acme/z".into(),
        window: "all".into(),
        metric: toolhost::budget::Metric::ToolCalls,
        amount,
        limit: Some(10),
    };
    for i in 0..3 {
        a.invocation_admit(Admit {
            run: run(&format!("inv_z{i}"), "hst_a", 1000),
            worst: vec![on_z(1)],
            existing: false,
        })
        .await
        .unwrap()
        .unwrap();
    }
    b.budget_charge(vec![on_z(20)]).await.unwrap();
    let zero = a
        .invocation_admit(Admit {
            run: run("inv_z_free", "hst_a", 1000),
            worst: vec![on_z(0)],
            existing: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(zero, Err(toolhost::storage::Refused::Exceeded(_))),
        "{zero:?}"
    );

    // A head whose signature was edited is vetted (and refused), never
    // signed over.
    la.append(vec![("own".into(), 20, json!({"a": "again"}))])
        .await
        .unwrap();
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_heads SET signature = repeat('0', 128) WHERE chain = 'own'")
        .execute(&mut db)
        .await
        .unwrap();
    let tampered = la
        .append(vec![("own".into(), 21, json!({"a": "tampered"}))])
        .await
        .unwrap_err();
    assert_eq!(tampered.kind, toolhost::ErrorKind::Corrupt, "{tampered:?}");
}

/// A row someone edited by hand (schema included) to hold NULL where
/// Toolhost never writes one is an error that says so, not a panic of the
/// committer (which would leave every caller batched with it waiting on
/// nothing).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_null_where_none_is_written_is_an_error() {
    use sqlx::Connection;
    let Some((log, url)) = pg_audit_log("conf-pg-null").await else {
        return;
    };
    let park = Work {
        end: Some(End {
            record: record("inv_1", "pending_approval"),
            expect: Expect::Mine {
                owner: "hst_a".into(),
            },
            used: Some(vec![]),
        }),
        approvals: vec![approval("apr_1", "inv_1", 1000)],
        ..Work::default()
    };
    log.commit(vec![("acme".into(), 1, json!({"park": 1}))], park)
        .await
        .unwrap();
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    for edit in [
        "ALTER TABLE approvals ALTER COLUMN invocation_id DROP NOT NULL",
        "UPDATE approvals SET invocation_id = NULL WHERE id = 'apr_1'",
    ] {
        sqlx::query(edit).execute(&mut db).await.unwrap();
    }
    let decide = Work {
        decide: Some(Decision {
            tenant: "acme".into(),
            approval_id: "apr_1".into(),
            status: toolhost::storage::ApprovalStatus::Approved,
            decided_by: Some("boss".into()),
            reason: None,
            now_ms: 10,
            run: Some(("hst_b".into(), 5000)),
        }),
        ..Work::default()
    };
    let err = log
        .commit(vec![("acme".into(), 2, json!({"decide": 1}))], decide)
        .await
        .unwrap_err();
    assert_ne!(err.kind, toolhost::ErrorKind::Conflict, "{err:?}");
    // The committer is still there for everyone else.
    log.append(vec![("acme".into(), 3, json!({"after": 1}))])
        .await
        .unwrap();
}

/// A unit of work is durable when its caller is answered: the WAL is
/// flushed past its commit. (Round 9 tried committing units of work without
/// waiting for the flush and answering after a later barrier commit; a
/// barrier that writes no WAL, such as a bare `txid_current()`, answers
/// before the flush, and this test caught it.)
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_commit_is_flushed_when_answered() {
    use sqlx::Connection;
    let Some((log, url)) = pg_audit_log("conf-pg-flush").await else {
        return;
    };
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    for i in 0..20i64 {
        let before: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&mut db)
            .await
            .unwrap();
        log.append(vec![("acme".into(), i, json!({"n": i}))])
            .await
            .unwrap();
        let flushed: bool = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn() > $1::pg_lsn")
            .bind(&before)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert!(
            flushed,
            "entry {i} was answered before the WAL was flushed past it"
        );
    }
}

/// An entry someone inserted by hand past a chain's head refuses that
/// chain's works alone, saying why: other tenants' works committed in the
/// same batches still commit (a stray row failed every batch it was in,
/// whoever's works were there).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_stray_entry_refuses_its_chain_alone() {
    use sqlx::Connection;
    let Some((log, url)) = pg_audit_log("conf-pg-stray").await else {
        return;
    };
    for chain in ["acme", "globex"] {
        log.append(vec![(chain.into(), 1, json!({"first": chain}))])
            .await
            .unwrap();
    }
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash)
         SELECT chain, seq + 1, time_ms, body, hash, hash FROM audit_entries
         WHERE chain = 'acme' ORDER BY seq DESC LIMIT 1",
    )
    .execute(&mut db)
    .await
    .unwrap();
    for round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..30i64 {
            let log = log.clone();
            let chain = if i % 2 == 0 { "acme" } else { "globex" };
            tasks.push(tokio::spawn(async move {
                let r = log
                    .append(vec![(chain.into(), 2 + i, json!({"round": round, "n": i}))])
                    .await;
                (chain, r)
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                ("globex", r) => {
                    r.unwrap();
                }
                (_, r) => {
                    let e = r.unwrap_err();
                    assert_eq!(e.kind, toolhost::ErrorKind::Corrupt, "{e:?}");
                    assert!(e.message.contains("past its signed head"), "{e:?}");
                }
            }
        }
    }
}

/// Fleet roles: one store leads a role at a time; when the leader's
/// connection goes (it died), another takes over.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_one_leader_per_role_and_it_passes_on() {
    let Some((a, b, _)) = two_replicas("conf-pg-lead").await else {
        return;
    };
    assert!(a.lead("reaper").await.unwrap());
    assert!(a.lead("reaper").await.unwrap(), "it keeps it");
    assert!(!b.lead("reaper").await.unwrap(), "one leader");
    assert!(b.lead("retention").await.unwrap(), "roles are separate");
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b.lead("reaper").await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "never passed on");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A database a newer Toolhost migrated is refused, saying so.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_newer_schema_refuses_an_older_host() {
    use sqlx::Connection;
    use toolhost::storage::postgres::{PostgresOptions, PostgresStorage};
    let Some(url) = common::pg::fresh_database("conf-pg-newer").await else {
        return;
    };
    drop(
        PostgresStorage::open(&PostgresOptions::new(&url))
            .await
            .unwrap(),
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE toolhost_schema SET version = version + 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let e = PostgresStorage::open(&PostgresOptions::new(&url))
        .await
        .err()
        .expect("refused");
    assert!(e.message.contains("newer than this host"), "{e}");
    // Unreachable: a clear error once the deadline passes.
    let mut options = PostgresOptions::new("postgres://u:secret@127.0.0.1:1/db");
    options.connect_deadline = std::time::Duration::from_millis(300);
    let e = PostgresStorage::open(&options)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.kind, toolhost::ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("cannot reach the database"), "{e}");
    assert!(!e.message.contains("secret"), "{e}");
}

/// TLS to the database (rustls): with `sslmode=require` every connection is
/// encrypted when the server offers TLS, and refused when it does not.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_tls_is_required_when_asked() {
    use sqlx::Connection;
    use toolhost::storage::postgres::{PostgresOptions, PostgresStorage};
    let Some(url) = common::pg::fresh_database("conf-pg-tls").await else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut plain = sqlx::PgConnection::connect(&format!("{url}{sep}sslmode=disable"))
        .await
        .unwrap();
    let offered: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    let mut options = PostgresOptions::new(&format!("{url}{sep}sslmode=require"));
    options.connect_deadline = std::time::Duration::from_millis(500);
    let opened = PostgresStorage::open(&options).await;
    if offered == "on" {
        let s = opened.unwrap();
        let encrypted: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(s.pool())
                .await
                .unwrap();
        assert!(encrypted);
        s.health().await.unwrap();
    } else {
        let e = opened.err().expect("no TLS, refused");
        assert!(e.message.contains("cannot reach the database"), "{e}");
    }
}

/// An idempotency key row in a state this host never writes (an unknown
/// state, or done without its answer) is an error (`corrupt`), not read as
/// a call still running (409 until it expired) or an empty replay.
#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_in_an_unknown_state_is_an_error() {
    use sqlx::Connection;
    let dir = common::tempdir("conf-idem-state");
    let sqlite: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir)
            .await
            .unwrap(),
    );
    let sqlite_url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut all: Vec<(&str, Arc<dyn Storage>, String)> = vec![("sqlite", sqlite, sqlite_url)];
    if let Some(url) = common::pg::fresh_database("conf-idem-state").await {
        let pg: Arc<dyn Storage> = Arc::new(
            toolhost::storage::postgres::PostgresStorage::open(
                &toolhost::storage::postgres::PostgresOptions::new(&url),
            )
            .await
            .unwrap(),
        );
        all.push(("postgres", pg, url));
    }
    for (name, s, url) in all {
        let begin = |id: &str| key_k1("fp", id);
        assert_eq!(
            s.idempotency_begin(begin("inv_1")).await.unwrap(),
            IdempotencyBegin::Started,
            "{name}"
        );
        for edit in [
            "UPDATE idempotency SET state = 'bogus'",
            "UPDATE idempotency SET state = 'done', response = NULL",
        ] {
            if name == "sqlite" {
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(edit).execute(&mut c).await.unwrap();
            } else {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query(edit).execute(&mut c).await.unwrap();
            }
            let e = s.idempotency_begin(begin("inv_2")).await.unwrap_err();
            assert_eq!(e.kind, toolhost::ErrorKind::Corrupt, "{name}: {edit}: {e}");
        }
    }
}

/// Acme's key `k1` begun with fingerprint `fp` for invocation `id` (owner
/// `hst_a`, lease until 1000) at 10 ms, kept until 100 s.
fn key_k1(fp: &str, id: &str) -> KeyBegin {
    KeyBegin {
        tenant: "acme".into(),
        key: "k1".into(),
        fingerprint: fp.into(),
        now_ms: 10,
        expires_ms: 100_000,
        run: NewRun {
            idempotency_key: Some("k1".into()),
            ..run(id, "hst_a", 1000)
        },
    }
}
