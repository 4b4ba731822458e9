//! The invocation lifecycle with an injected clock: leases, renewal, the
//! reaper, abandoned tasks, approval expiry — no real sleeps.

mod common;

use common::{call, runtime, tempdir, tool};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use toolhost::audit::AuditLog;
use toolhost::budget::Ledger;
use toolhost::clock::ManualClock;
use toolhost::gate::{CallContext, Governed};
use toolhost::ids::{ApprovalId, InvocationId, TenantId};
use toolhost::lease::Instance;
use toolhost::policy::Policy;
use toolhost::service::{Answer, InvocationService, Keys, Request};
use toolhost::storage::prelude::*;
use toolhost::storage::{Admit, NewRun};
use toolhost::{ErrorKind, Host};

const T0: i64 = 1_790_000_000_000;
const LEASE: Duration = Duration::from_secs(15);

const POLICY: &str = r#"
workflow: w
budget:
  max_tool_calls: 5
policy:
  allow_tools: [hello, issue-refund]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
"#;

struct Host2 {
    storage: Arc<dyn Storage>,
    clock: Arc<ManualClock>,
    audit: Arc<AuditLog>,
    dir: std::path::PathBuf,
}

/// A store on a manual clock, and a service (a "host") on it.
async fn store() -> Host2 {
    let dir = tempdir("lifecycle");
    let storage: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir)
            .await
            .unwrap(),
    );
    let audit = AuditLog::open(storage.clone(), &dir).await.unwrap();
    Host2 {
        storage,
        clock: ManualClock::new(T0),
        audit,
        dir,
    }
}

fn service(s: &Host2) -> Arc<InvocationService> {
    let instance = Instance::new(s.clock.clone(), LEASE);
    let gate = Arc::new(
        Governed::new(
            Arc::new(Policy::parse("p.yaml", POLICY).unwrap()),
            Ledger::new(s.storage.clone()),
            s.audit.clone(),
            Arc::new(toolhost::secrets::NoSecrets),
        )
        .with_instance(instance.clone()),
    );
    Arc::new(InvocationService::new(
        Arc::new(Host::new(runtime(), gate)),
        Some(Keys {
            audit: s.audit.clone(),
            retention: Duration::from_secs(86_400),
        }),
        instance,
    ))
}

fn run_row(id: &str, owner: &str, lease_until: i64, key: Option<&str>) -> NewRun {
    NewRun {
        id: id.into(),
        tenant: "acme".into(),
        tool: "text-tools".into(),
        function: "hello".into(),
        version: None,
        workflow: Some("w".into()),
        task_id: Some("t1".into()),
        principal: Some("k".into()),
        transport: "http".into(),
        idempotency_key: key.map(str::to_string),
        created_ms: T0,
        owner: owner.into(),
        lease_until,
    }
}

async fn calls(s: &Host2) -> (i64, i64) {
    s.storage
        .budget_usage(&"task:acme/t1".into())
        .await
        .unwrap()
        .iter()
        .find(|u| u.metric == toolhost::budget::Metric::ToolCalls)
        .map_or((0, 0), |u| (u.used, u.reserved))
}

async fn verify(s: &Host2) -> toolhost::audit::verify::Report {
    let key = toolhost::audit::verify::parse_key(&s.audit.public_key()).unwrap();
    toolhost::audit::verify::verify(s.audit.storage(), &key, None)
        .await
        .unwrap()
}

/// A host died while running an admitted call: nothing happens until its
/// lease runs out; then any host's reaper ends it as `host_lost`, charges
/// its worst case, releases its reservation, answers its key, and audits it.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_invocation_is_reaped_after_its_lease_not_before() {
    let s = store().await;
    let survivor = service(&s);
    let charge = |amount, limit| toolhost::storage::Charge {
        scope: "task:acme/t1".into(),
        window: "all".into(),
        metric: toolhost::budget::Metric::ToolCalls,
        amount,
        limit,
    };
    // What the dead host left: a key, its admitted row, its reservation.
    let begun = s
        .storage
        .idempotency_begin(toolhost::storage::KeyBegin {
            tenant: "acme".into(),
            key: "retry-me".into(),
            fingerprint: "fp".into(),
            now_ms: T0,
            expires_ms: T0 + 86_400_000,
            run: run_row("inv_dead", "hst_dead", T0 + 15_000, Some("retry-me")),
        })
        .await
        .unwrap();
    assert_eq!(begun, toolhost::storage::IdempotencyBegin::Started);
    s.storage
        .invocation_admit(Admit {
            run: run_row("inv_dead", "hst_dead", T0 + 15_000, Some("retry-me")),
            worst: vec![charge(1, Some(5))],
            existing: true,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(calls(&s).await, (0, 1));

    s.clock.advance(14_999);
    assert_eq!(survivor.reap().await.unwrap(), 0, "the lease still holds");
    s.clock.advance(2);
    assert_eq!(survivor.reap().await.unwrap(), 1);
    assert_eq!(survivor.reap().await.unwrap(), 0, "once");

    let rec = s
        .storage
        .invocation_get(&"acme".into(), &"inv_dead".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, toolhost::storage::Status::Error);
    assert_eq!(rec.error_kind.as_deref(), Some("host_lost"));
    assert_eq!(
        calls(&s).await,
        (1, 0),
        "worst case charged, nothing left reserved"
    );
    // The key answers the lost outcome (documented): nothing runs again.
    let again = s
        .storage
        .idempotency_begin(toolhost::storage::KeyBegin {
            tenant: "acme".into(),
            key: "retry-me".into(),
            fingerprint: "fp".into(),
            now_ms: s.clock.now_ms(),
            expires_ms: T0 + 86_400_000,
            run: run_row("inv_retry", "hst_x", T0, Some("retry-me")),
        })
        .await
        .unwrap();
    match again {
        toolhost::storage::IdempotencyBegin::Replay { response, .. } => {
            let v: Value = serde_json::from_str(&response).unwrap();
            assert_eq!(v["error"]["kind"], "host_lost", "{v}");
            assert_eq!(v["invocation_id"], "inv_dead");
        }
        other => panic!("{other:?}"),
    }
    let report = verify(&s).await;
    assert!(report.ok, "{report:?}");
    let entries = s.storage.audit_read("acme", 0, 100).await.unwrap();
    assert!(entries.iter().any(|e| e.body.contains("host_lost")));
}

use toolhost::clock::Clock;

/// A running invocation's owner renews its lease: another host's reaper
/// leaves it alone as long as the owner lives.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_lease_is_not_reaped() {
    let s = store().await;
    let owner = service(&s);
    let other = service(&s);
    let id = "inv_alive";
    let _running = owner.instance().live().enter(&InvocationId::from(id));
    s.storage
        .invocation_admit(Admit {
            run: run_row(
                id,
                &owner.instance().id,
                owner.instance().lease_until(),
                None,
            ),
            worst: vec![],
            existing: false,
        })
        .await
        .unwrap()
        .unwrap();
    for _ in 0..10 {
        s.clock.advance(10_000);
        assert_eq!(owner.renew().await.unwrap(), 1);
        assert_eq!(other.reap().await.unwrap(), 0);
    }
    // The owner stops renewing (it died): the lease runs out.
    s.clock.advance(16_000);
    assert_eq!(other.reap().await.unwrap(), 1);
}

/// A keyed invocation whose host died before admission never ran: it is
/// forgotten with its key, and a retry runs it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unadmitted_keyed_invocation_is_forgotten_and_its_key_freed() {
    let s = store().await;
    let svc = service(&s);
    s.storage
        .idempotency_begin(toolhost::storage::KeyBegin {
            tenant: "acme".into(),
            key: "k".into(),
            fingerprint: "fp".into(),
            now_ms: T0,
            expires_ms: T0 + 86_400_000,
            run: run_row("inv_never", "hst_dead", T0 + 15_000, Some("k")),
        })
        .await
        .unwrap();
    s.clock.advance(20_000);
    assert_eq!(svc.reap().await.unwrap(), 1);
    assert!(
        s.storage
            .invocation_get(&"acme".into(), &"inv_never".into())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(calls(&s).await, (0, 0));
}

/// An approval nobody decides expires by the reaper: its invocation ends
/// refused (`approval_expired`), and nobody can approve it afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn an_undecided_approval_expires_and_stays_expired() {
    let s = store().await;
    let svc = service(&s);
    let (outcome, approval_id) = park_refund(&s, &svc, "o1").await;
    s.clock
        .advance(toolhost::gate::governed::DEFAULT_APPROVAL_TTL_MS - 1);
    assert_eq!(svc.reap().await.unwrap(), 0);
    s.clock.advance(1);
    assert_eq!(svc.reap().await.unwrap(), 1);
    let a = s
        .storage
        .approval_get(&TenantId::from("acme"), &approval_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, toolhost::storage::ApprovalStatus::Expired);
    let rec = s
        .storage
        .invocation_get(&TenantId::from("acme"), &outcome.invocation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, toolhost::storage::Status::Refused);
    assert_eq!(rec.error_kind.as_deref(), Some("approval_expired"));
    assert!(verify(&s).await.ok);
}

/// A refund above the approval threshold, parked for a human.
async fn park_refund(
    s: &Host2,
    svc: &Arc<InvocationService>,
    order: &str,
) -> (toolhost::Outcome, ApprovalId) {
    let registry = toolhost::registry::Registry::new(s.storage.clone(), runtime());
    registry
        .register(
            toolhost::registry::Upload {
                tenant: &TenantId::from("acme"),
                name: "refund",
                version: None,
                bytes: std::fs::read(common::guest("refund")).unwrap(),
                wit: None,
                deploy: true,
            },
            &|_| {},
        )
        .await
        .unwrap();
    let refund = Arc::new(
        registry
            .load(&TenantId::from("acme"), "refund")
            .await
            .unwrap()
            .tool,
    );
    let mut context = CallContext {
        tenant: "acme".into(),
        task_id: Some("t1".into()),
        principal: Some("k".into()),
        ..Default::default()
    };
    context.workflow = Some("w".into());
    let answer = svc
        .invoke(Request {
            tool: refund,
            function: Some("issue-refund".into()),
            args: json!({"order-id": order, "amount-usd": 80.0}),
            limits: toolhost::Limits::default(),
            context,
            hold: None,
        })
        .await
        .unwrap();
    let Answer::Done(outcome) = answer else {
        panic!("no approval asked")
    };
    let approval_id = outcome.approval_id.clone().expect("parked for approval");
    (*outcome, approval_id)
}

/// A request whose invocation row cannot be finished (its status hand-edited
/// to a name no host writes) does not stop the reaper from expiring the
/// others.
#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_request_does_not_stop_the_others_expiring() {
    let s = store().await;
    let svc = service(&s);
    let (poisoned, _) = park_refund(&s, &svc, "o1").await;
    s.clock.advance(10);
    let (_, fine) = park_refund(&s, &svc, "o2").await;
    use sqlx::Connection;
    let url = format!("sqlite://{}", s.dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE invocations SET status = 'parked?' WHERE id = ?")
        .bind(poisoned.invocation_id.as_str())
        .execute(&mut c)
        .await
        .unwrap();
    s.clock
        .advance(toolhost::gate::governed::DEFAULT_APPROVAL_TTL_MS);
    assert_eq!(svc.reap().await.unwrap(), 1, "the other request expires");
    let a = s
        .storage
        .approval_get(&TenantId::from("acme"), &fine)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, toolhost::storage::ApprovalStatus::Expired);
}

/// A task that ends without recording its end hands its row to the reaper
/// at once (no waiting for the lease): here, a recording failure.
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_invocation_is_reaped_at_once() {
    let s = store().await;
    let svc = service(&s);
    let id = "inv_abandoned";
    let running = svc.instance().live().enter(&InvocationId::from(id));
    s.storage
        .invocation_admit(Admit {
            run: run_row(id, &svc.instance().id, svc.instance().lease_until(), None),
            worst: vec![],
            existing: false,
        })
        .await
        .unwrap()
        .unwrap();
    drop(running); // as a panic would
    assert_eq!(svc.reap().await.unwrap(), 1, "the lease has not run out");
    let rec = s
        .storage
        .invocation_get(&"acme".into(), &id.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.error_kind.as_deref(), Some("host_lost"));
}

/// The ordinary path leaves nothing running and nothing reserved.
#[tokio::test(flavor = "multi_thread")]
async fn an_ordinary_invocation_leaves_nothing_running() {
    let s = store().await;
    let svc = service(&s);
    let mut c = call("hello", json!({"name": "x"}));
    c.context = CallContext {
        tenant: "acme".into(),
        workflow: Some("w".into()),
        task_id: Some("t1".into()),
        principal: Some("k".into()),
        ..Default::default()
    };
    let answer = svc
        .invoke(Request {
            tool: tool("text-tools"),
            function: Some(c.function),
            args: c.args,
            limits: c.limits,
            context: c.context,
            hold: None,
        })
        .await
        .unwrap();
    let Answer::Done(o) = answer else { panic!() };
    assert!(o.ok, "{:?}", o.error);
    assert!(svc.instance().live().is_empty());
    assert!(
        s.storage
            .invocation_expired(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(calls(&s).await, (1, 0));
    assert_eq!(svc.reap().await.unwrap(), 0);
    let _ = ErrorKind::HostLost;
}
