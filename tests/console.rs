//! The web console (`/console`) of a spawned `host serve`:
//!
//! * over plain HTTP: sessions (cookie flags, expiry of revoked keys,
//!   forged cookies), CSRF tokens and `Origin` on every form, roles as the
//!   API has them, the requester's own key, security headers, escaping;
//! * in a real browser: `tests/browser/console.spec.mjs`, Playwright
//!   (`playwright-core`) driving Debian's `chromium`: sign in, the inbox
//!   shows an agent's refund, approve it and see the result, deny one with
//!   a reason, an auditor sees audit but cannot approve, the XSS probe is
//!   text, a cross-site form post is refused.
//!
//! The browser test needs `node` and `chromium` on PATH (or
//! `TOOLHOST_CHROMIUM`) and `npm ci` in `tests/browser` (done here when
//! `node_modules` is missing). Without them it fails when `CI` is set and
//! is skipped, loudly, otherwise. `TOOLHOST_SCREENSHOTS=DIR` saves the
//! inbox and reports pages there (`docs/` holds the README's).

mod common;

use common::repo_root;
use common::serve::{Client, Server, data_dir, host, key, ok, s};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A browser-less console client: cookies by hand, no redirects followed.
struct Browserless {
    http: reqwest::Client,
    url: String,
    cookies: Vec<(String, String)>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browserless {
    fn new(server: &Server) -> Browserless {
        Browserless {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            url: server.url.clone(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, r: reqwest::RequestBuilder) -> Answer {
        let r = if self.cookies.is_empty() {
            r
        } else {
            r.header("cookie", self.cookie_header())
        };
        let response = r.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for set in headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
        let body = response.text().await.unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let r = self.http.get(format!("{}{path}", self.url));
        self.send(r).await
    }

    /// POST a form, with `Origin` set to `origin` (this server's when
    /// `None`).
    async fn post(&mut self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Answer {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", origin.unwrap_or(&self.url))
            .body(body);
        self.send(r).await
    }

    /// Sign in with `key`; returns the session's CSRF token.
    async fn sign_in(&mut self, key: &str) -> String {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200);
        let token = csrf_in(&form.body);
        let signed = self
            .post("/console/login", &[("key", key), ("csrf", &token)], None)
            .await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        let page = self.get("/console/invocations").await;
        assert_eq!(page.status, 200, "{}", page.body);
        csrf_in(&page.body)
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The first form's CSRF token on a page.
fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn key_id(key: &str) -> &str {
    &key[4..20]
}

/// An agent's calls the console shows: two refunds parked for approval, a
/// hostile result and hostile arguments. Returns (refund to approve, refund
/// to deny, XSS invocation id).
async fn agent_calls(agent: &Client) -> (String, String, String) {
    let refund = |order: &str, amount: f64| json!({"args": {"order-id": order, "amount-usd": amount}, "task_id": "support-42"});
    let (status, a) = agent
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            refund("ord_1002", 120.0),
        )
        .await;
    assert_eq!(status, 202, "{a}");
    let (status, d) = agent
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            refund("ord_1004", 500.0),
        )
        .await;
    assert_eq!(status, 202, "{d}");
    let probe =
        "<script>window.__xss = 1; alert('xss')</script><img src=x onerror=\"alert('img')\">";
    let (status, x) = agent
        .post(
            "/v1/tools/hostile/echo/invoke",
            json!({"args": {"s": probe}, "task_id": "<b>task</b>"}),
        )
        .await;
    assert_eq!(status, 200, "{x}");
    assert_eq!(x["result"], probe);
    for _ in 0..3 {
        agent
            .post(
                "/v1/tools/text-tools/hello/invoke",
                json!({"args": {"name": "console"}, "task_id": "support-7"}),
            )
            .await;
    }
    agent
        .post(
            "/v1/tools/hostile/spin/invoke",
            json!({"task_id": "t-spin"}),
        )
        .await;
    let id = |v: &Value, f: &str| v[f].as_str().unwrap().to_string();
    (
        id(&a, "approval_id"),
        id(&d, "approval_id"),
        id(&x, "invocation_id"),
    )
}

fn tools() -> [(&'static str, &'static str); 3] {
    [
        ("refund", "refund"),
        ("hostile", "hostile"),
        ("text-tools", "text_tools"),
    ]
}

#[tokio::test]
async fn sessions_forms_and_roles_hold_over_http() {
    let dir = data_dir("console-http", &tools());
    let agent = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let auditor = key(&dir, "acme", &["audit"]);
    // A key that may both request and approve: it may not decide its own.
    let both = key(&dir, "acme", &["invoke", "approve"]);
    let other_tenant = key(&dir, "globex", &["approve", "audit"]);
    let server = Server::start(&dir, &[]);
    let (approve_id, deny_id, xss) = agent_calls(&Client::new(&server, Some(&agent))).await;

    // Without a session: the sign-in form.
    let mut anon = Browserless::new(&server);
    let r = anon.get("/console/approvals").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/console/login");
    let r = anon.get("/console/login").await;
    for h in [
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
    ] {
        assert!(r.headers.contains_key(h), "{h}");
    }
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!r.body.contains("<script"), "no script at all");
    // A wrong key: 401, no session.
    let token = csrf_in(&r.body);
    let r = anon
        .post(
            "/console/login",
            &[("key", "thk_0000000000000000_x"), ("csrf", &token)],
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(!anon.cookies.iter().any(|(n, _)| n == "toolhost_session"));
    // The sign-in form needs its own token (login CSRF).
    let r = anon
        .post(
            "/console/login",
            &[("key", &approver), ("csrf", "00")],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Signing in: the cookie's flags.
    let mut a = Browserless::new(&server);
    let form = a.get("/console/login").await;
    let token = csrf_in(&form.body);
    let signed = a
        .post(
            "/console/login",
            &[("key", &approver), ("csrf", &token)],
            None,
        )
        .await;
    assert_eq!(signed.status, 303);
    let set: Vec<&str> = signed
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .filter(|v| v.starts_with("toolhost_session="))
        .collect();
    assert_eq!(set.len(), 1, "{set:?}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(set[0].contains(flag), "{flag}: {}", set[0]);
    }
    assert!(!set[0].contains("Secure"), "plain HTTP: {}", set[0]);
    // Behind a TLS proxy: Secure.
    let mut tls = Browserless::new(&server);
    let form = tls.get("/console/login").await;
    let token = csrf_in(&form.body);
    let body = format!("key={}&csrf={}", enc(&approver), enc(&token));
    let r = tls
        .http
        .post(format!("{}/console/login", tls.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", "https")
        .header("origin", &tls.url)
        .header("cookie", tls.cookie_header())
        .body(body);
    let r = tls.send(r).await;
    assert!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().contains("; Secure")),
        "{:?}",
        r.headers
    );

    // Another replica on the same store takes the session: it lives in the
    // cookie and the store, not in a server's memory.
    {
        let replica = Server::start(&dir, &[]);
        let mut on_replica = Browserless::new(&replica);
        on_replica.cookies = a.cookies.clone();
        let page = on_replica.get("/console/approvals").await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains(&approve_id));
        replica.stop();
    }

    // The approver's inbox: both refunds, newest first, with their packets.
    let csrf = {
        let page = a.get("/console/approvals").await;
        assert_eq!(page.status, 200);
        let first = page.body.find(&deny_id).unwrap();
        let second = page.body.find(&approve_id).unwrap();
        assert!(first < second, "newest first");
        assert!(page.body.contains("120.0 USD"), "the amount");
        assert!(page.body.contains("issue_refund over 50 USD"), "the rule");
        assert!(page.body.contains(key_id(&agent)), "the requester");
        csrf_in(&page.body)
    };
    let approve_path = format!("/console/approvals/{approve_id}/approve");
    // No token, another session's token, a foreign Origin: refused, and
    // nothing decided.
    let mut b = Browserless::new(&server);
    let other_csrf = b.sign_in(&approver).await;
    assert_ne!(other_csrf, csrf);
    for (form, origin) in [
        (vec![("reason", "x")], None),
        (vec![("reason", "x"), ("csrf", other_csrf.as_str())], None),
        (vec![("reason", "x"), ("csrf", "")], None),
        (vec![("csrf", csrf.as_str())], Some("http://evil.example")),
        (vec![("csrf", csrf.as_str())], Some("null")),
    ] {
        let r = a.post(&approve_path, &form, origin).await;
        assert_eq!(r.status, 403, "{form:?} {origin:?}: {}", r.body);
    }
    let pending = Client::new(&server, Some(&approver))
        .get(&format!("/v1/approvals/{approve_id}"))
        .await
        .1;
    assert_eq!(pending["status"], "pending");

    // An auditor sees the inbox and the audit page, but no decision form,
    // and a decision posted anyway is refused as the API refuses it.
    let mut au = Browserless::new(&server);
    let au_csrf = au.sign_in(&auditor).await;
    let inbox = au.get("/console/approvals").await;
    assert_eq!(inbox.status, 200);
    assert!(!inbox.body.contains("/approve\""), "no approve form");
    assert!(inbox.body.contains("cannot decide"));
    assert_eq!(au.get("/console/audit").await.status, 200);
    let r = au.post(&approve_path, &[("csrf", &au_csrf)], None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("approve"), "{}", r.body);
    // The approver has no audit page; an invoke key no inbox.
    assert_eq!(a.get("/console/audit").await.status, 403);
    let mut ag = Browserless::new(&server);
    ag.sign_in(&agent).await;
    assert_eq!(ag.get("/console/approvals").await.status, 403);
    let tool_page = ag.get("/console/tools/refund").await;
    assert_eq!(tool_page.status, 200);
    assert!(!tool_page.body.contains("Deploy"), "deploy is for admins");
    // Another tenant sees none of acme's.
    let mut g = Browserless::new(&server);
    g.sign_in(&other_tenant).await;
    let r = g.get(&format!("/console/approvals/{approve_id}")).await;
    assert_eq!(r.status, 404);
    let r = g.get(&format!("/console/invocations/{xss}")).await;
    assert_eq!(r.status, 404);
    assert!(!g.get("/console/approvals").await.body.contains(&approve_id));

    // The requester's own key cannot decide.
    let mut self_approver = Browserless::new(&server);
    let own_csrf = self_approver.sign_in(&both).await;
    let (_, own) = Client::new(&server, Some(&both))
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "ord_1002", "amount-usd": 60.0}}),
        )
        .await;
    let own_id = own["approval_id"].as_str().unwrap();
    let inbox = self_approver.get("/console/approvals").await;
    assert!(inbox.body.contains("another approver must decide"));
    let r = self_approver
        .post(
            &format!("/console/approvals/{own_id}/approve"),
            &[("csrf", &own_csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Approve with the right token: the call runs; its outcome is shown.
    let r = a
        .post(
            &approve_path,
            &[("reason", "customer verified"), ("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let detail = a.get(r.headers["location"].to_str().unwrap()).await;
    assert!(detail.body.contains("re_ord_1002_12000"), "{}", detail.body);
    assert!(detail.body.contains("customer verified"));
    // Once decided, a second decision is a conflict.
    let r = a
        .post(
            &format!("/console/approvals/{approve_id}/deny"),
            &[("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // The XSS probe is text in the page.
    let page = a.get(&format!("/console/invocations/{xss}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>window"), "{}", page.body);
    assert!(!page.body.contains("<img src=x"), "{}", page.body);
    assert!(
        page.body.contains("&lt;script&gt;window.__xss"),
        "{}",
        page.body
    );
    let list = a
        .get("/console/invocations?task_id=%3Cb%3Etask%3C%2Fb%3E")
        .await;
    assert!(
        list.body.contains("&lt;b&gt;task&lt;/b&gt;"),
        "{}",
        list.body
    );
    assert!(!list.body.contains("<b>task</b>"));

    // Budgets: the task's ledger against the policy's limit (3 calls).
    let budgets = a.get("/console/budgets").await;
    assert_eq!(budgets.status, 200, "{}", budgets.body);
    let at = budgets
        .body
        .find("task:acme/support-7")
        .expect("the task's ledger");
    let ledger = &budgets.body[at..];
    assert!(ledger.contains("tool_calls"), "{ledger}");
    assert!(ledger.contains("3 used, 0 reserved of 3"), "{ledger}");
    // Reports: figures and charts.
    let stats = a.get("/console/stats?since=1h").await;
    assert_eq!(stats.status, 200);
    assert!(stats.body.contains("fuel_exhausted"), "{}", stats.body);
    assert_eq!(stats.body.matches("<svg class=\"chart\"").count(), 2);
    let bad = a.get("/console/stats?since=soon").await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // An admin deploys, rolls back, disables and enables from the tool page,
    // as the API does; the same forms from an approver are refused.
    ok(host(&[
        "register",
        s(&common::guest("types")),
        "--name",
        "text-tools",
        "--version",
        "2",
        "--no-deploy",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
    ]));
    let admin = key(&dir, "acme", &["admin"]);
    let mut ad = Browserless::new(&server);
    let ad_csrf = ad.sign_in(&admin).await;
    let api = Client::new(&server, Some(&admin));
    let page = ad.get("/console/tools/text-tools").await;
    assert!(page.body.contains("Deploy"), "{}", page.body);
    let r = ad
        .post(
            "/console/tools/text-tools/deploy",
            &[("version", "2"), ("csrf", &ad_csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(api.get("/v1/tools/text-tools").await.1["version"], "2");
    // Version 2 is current: the page offers the rollback to 1.
    let page = ad.get("/console/tools/text-tools").await;
    assert!(page.body.contains("Roll back to 1"), "{}", page.body);
    let r = ad
        .post(
            "/console/tools/text-tools/deploy",
            &[("version", "1"), ("csrf", &ad_csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(api.get("/v1/tools/text-tools").await.1["version"], "1");
    let r = ad
        .post(
            "/console/tools/text-tools/disable",
            &[("csrf", &ad_csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(api.get("/v1/tools/text-tools").await.1["disabled"], true);
    let r = a
        .post("/console/tools/text-tools/enable", &[("csrf", &csrf)], None)
        .await;
    assert_eq!(r.status, 403, "an approver is no admin: {}", r.body);
    let r = ad
        .post(
            "/console/tools/text-tools/enable",
            &[("csrf", &ad_csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(api.get("/v1/tools/text-tools").await.1["disabled"], false);
    let r = ad
        .post(
            "/console/tools/text-tools/deploy",
            &[("version", "9"), ("csrf", &ad_csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 404, "no such version: {}", r.body);

    // Revoking the key ends its sessions at once (no cache in between).
    ok(host(&[
        "keys",
        "revoke",
        key_id(&approver),
        "--data-dir",
        s(&dir),
    ]));
    let r = a.get("/console/approvals").await;
    assert_eq!(r.status, 303, "a revoked key's session is over");
    let r = a
        .post(
            &format!("/console/approvals/{deny_id}/deny"),
            &[("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/console/login");

    // A forged cookie (another key's id under this one's signature) or a
    // garbled one is no session.
    let mut f = Browserless::new(&server);
    f.sign_in(&auditor).await;
    let real = f
        .cookies
        .iter()
        .find(|(n, _)| n == "toolhost_session")
        .unwrap()
        .1
        .clone();
    let forged = real.replacen(key_id(&auditor), key_id(&both), 1);
    for bad in [forged, format!("{real}0"), "v1.x.y.z.w".into()] {
        f.cookies = vec![("toolhost_session".into(), bad)];
        assert_eq!(f.get("/console/approvals").await.status, 303);
    }
    // Sign-out removes the cookie.
    let mut o = Browserless::new(&server);
    let token = o.sign_in(&auditor).await;
    let r = o.post("/console/logout", &[("csrf", &token)], None).await;
    assert_eq!(r.status, 303);
    assert!(!o.cookies.iter().any(|(n, _)| n == "toolhost_session"));
    assert_eq!(o.get("/console/approvals").await.status, 303);
    // A cookie planted beside the real one (another port or a sibling host
    // can set one for this path) that parses with the same key id but does
    // not verify: a form is checked against the session that verified.
    let mut p = Browserless::new(&server);
    let token = p.sign_in(&auditor).await;
    let real = p
        .cookies
        .iter()
        .find(|(n, _)| n == "toolhost_session")
        .unwrap()
        .1
        .clone();
    let mut parts: Vec<String> = real.split('.').map(str::to_string).collect();
    parts[3] = "0".repeat(parts[3].len());
    p.cookies
        .insert(0, ("toolhost_session".into(), parts.join(".")));
    let r = p.post("/console/logout", &[("csrf", &token)], None).await;
    assert_eq!(r.status, 303, "{}", r.body);
    // An oversized form is refused before it is read whole.
    let big = "x".repeat(64 << 10);
    let r = au
        .post(&approve_path, &[("reason", &big), ("csrf", &au_csrf)], None)
        .await;
    assert_eq!(r.status, 413);
    server.stop();
}

/// What the browser test needs: node, chromium, and playwright-core
/// installed in tests/browser. `Err` says what is missing.
/// A call approved in the console runs under the server's concurrency
/// limits as one approved over the API does: with the only slot busy, the
/// approval is refused (503, retry later) and nothing runs; once the slot
/// is free, it goes through.
#[tokio::test]
async fn a_console_approval_takes_a_slot_like_the_api() {
    let dir = data_dir("console-slots", &tools());
    let agent = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(&dir, &["--max-concurrency", "1", "--max-queue", "0"]);
    let c = Client::new(&server, Some(&agent));
    let (status, parked) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "ord_1002", "amount-usd": 120.0}}),
        )
        .await;
    assert_eq!(status, 202, "{parked}");
    let approval = parked["approval_id"].as_str().unwrap().to_string();
    let mut a = Browserless::new(&server);
    let token = a.sign_in(&approver).await;
    // The only slot, held by a call that runs until its deadline.
    let slow = c.sleep_forever();
    let busy = c
        .hello_until(503, 100, std::time::Duration::from_millis(20))
        .await;
    assert!(busy, "the slow call never held the slot");
    let path = format!("/console/approvals/{approval}/approve");
    let r = a.post(&path, &[("csrf", &token)], None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("concurrency"), "{}", r.body);
    // Once the slot is free: nothing was decided, and the same approval
    // goes through.
    assert_eq!(slow.await.unwrap().status(), 200);
    let approver_client = Client::new(&server, Some(&approver));
    let (_, pending) = approver_client
        .get(&format!("/v1/approvals/{approval}"))
        .await;
    assert_eq!(pending["status"], "pending", "{pending}");
    let r = a.post(&path, &[("csrf", &token)], None).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let (_, done) = approver_client
        .get(&format!("/v1/approvals/{approval}"))
        .await;
    assert_eq!(done["status"], "approved", "{done}");
    server.stop();
}

/// Forms whose bodies arrive slowly (or never) hold their connections, not
/// the console's slots: a signed-in page still answers at once, and each
/// slow form ends with 408 once its body is overdue.
#[tokio::test]
async fn slow_form_bodies_do_not_take_the_console_from_signed_in_users() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = data_dir("console-slow-forms", &tools());
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(&dir, &[]);
    let mut a = Browserless::new(&server);
    a.sign_in(&approver).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    // More slow forms than the console has slots (16): headers promising
    // 16000 bytes, then a few bytes, then nothing.
    let mut slow = Vec::new();
    for _ in 0..24 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /console/login HTTP/1.1\r\nhost: {addr}\r\norigin: {}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: 16000\r\n\r\ncsrf=",
            server.url
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let page = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        a.get("/console/approvals"),
    )
    .await
    .expect("a signed-in page waited behind slow form bodies");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The slow forms themselves: 408, a clear error, once overdue.
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        slow[0].read_to_end(&mut answer),
    )
    .await
    .expect("the slow form was never answered")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    server.stop();
}

fn browser_setup(browser_dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let on_path = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
    };
    let node = on_path("node").ok_or("`node` is not on PATH")?;
    let chromium = match std::env::var_os("TOOLHOST_CHROMIUM") {
        Some(p) => PathBuf::from(p),
        None => {
            on_path("chromium").ok_or("`chromium` is not on PATH (apt-get install -y chromium)")?
        }
    };
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        let npm = on_path("npm").ok_or("`npm` is not on PATH")?;
        let out = Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(browser_dir)
            .output()
            .map_err(|e| format!("npm ci: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "npm ci in tests/browser failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok((node, chromium))
}

#[tokio::test]
async fn console_in_a_real_browser() {
    let browser_dir = repo_root().join("tests/browser");
    let (node, chromium) = match browser_setup(&browser_dir) {
        Ok(found) => found,
        Err(missing) if std::env::var_os("CI").is_some() => {
            panic!("the browser test cannot run in CI: {missing}")
        }
        Err(missing) => {
            eprintln!(
                "\n*** SKIPPED console_in_a_real_browser: {missing}.\n*** CI runs it; install chromium and node to run it here.\n"
            );
            return;
        }
    };
    let dir = data_dir("console-browser", &tools());
    let agent = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let auditor = key(&dir, "acme", &["audit"]);
    let server = Server::start(&dir, &[]);
    let (approve_id, deny_id, xss) = agent_calls(&Client::new(&server, Some(&agent))).await;
    let out = Command::new(node)
        .arg(browser_dir.join("console.spec.mjs"))
        .current_dir(&browser_dir)
        .env("TOOLHOST_URL", &server.url)
        .env("TOOLHOST_CHROMIUM", &chromium)
        .env("APPROVER_KEY", &approver)
        .env("AUDITOR_KEY", &auditor)
        .env("AGENT_KEY_ID", key_id(&agent))
        .env("APPROVE_ID", &approve_id)
        .env("DENY_ID", &deny_id)
        .env("XSS_INVOCATION", &xss)
        .env("PROFILE_DIR", dir.join("chromium-profile"))
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    // What the browser did, as the API sees it.
    let c = Client::new(&server, Some(&approver));
    let (_, a) = c.get(&format!("/v1/approvals/{approve_id}")).await;
    assert_eq!(a["status"], "approved", "{a}");
    assert_eq!(a["decided_by"], key_id(&approver));
    let (_, d) = c.get(&format!("/v1/approvals/{deny_id}")).await;
    assert_eq!(d["status"], "denied", "{d}");
    assert_eq!(d["reason"], "amount above the order policy <i>limit</i>");
    server.stop();
}
