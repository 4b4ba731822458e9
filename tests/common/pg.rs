//! A real PostgreSQL server for the tests that need one: each gets a fresh
//! database on the server `TOOLHOST_TEST_DATABASE_URL` names (bring one up
//! with `eval "$(scripts/pg-test-server.sh)"`). Without it, a test skips
//! loudly — and fails when `CI` is set: CI always runs them.

use std::sync::atomic::{AtomicU32, Ordering};

/// The test server's URL, if one is configured; panics in CI without one.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var("TOOLHOST_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{test}: TOOLHOST_TEST_DATABASE_URL is not set, and CI must run the PostgreSQL tests (eval \"$(scripts/pg-test-server.sh)\")"
        ),
        _ => {
            eprintln!(
                "\n*** SKIPPED the PostgreSQL part of {test}: TOOLHOST_TEST_DATABASE_URL is not set.\n*** Run `eval \"$(scripts/pg-test-server.sh)\"` (as root, or with PostgreSQL installed) to run it; CI always does.\n"
            );
            None
        }
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let slash = base
        .rfind('/')
        .filter(|&i| i > base.find("://").unwrap_or(0) + 2);
    let base = match slash {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A fresh, empty database on the test server: its URL. Databases this
/// helper made more than an hour ago (by earlier runs) are dropped first.
pub async fn fresh_database(test: &str) -> Option<String> {
    use sqlx::Connection;
    static N: AtomicU32 = AtomicU32::new(0);
    let url = server_url(test)?;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{test}: cannot connect to TOOLHOST_TEST_DATABASE_URL: {e}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if N.load(Ordering::SeqCst) == 0 {
        let old: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'th\\_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        for name in old {
            let made: Option<u64> = name.split('_').nth(1).and_then(|t| t.parse().ok());
            if made.is_some_and(|t| t + 3600 < now) {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        }
    }
    let name = format!(
        "th_{now}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{test}: cannot create a test database: {e}"));
    Some(with_database(&url, &name))
}
