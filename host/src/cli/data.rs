//! Shared flags for commands that use the data dir and the governed gate.

use std::path::PathBuf;
use std::sync::Arc;
use toolhost::audit::{AuditLog, KeySource};
use toolhost::budget::Ledger;
use toolhost::gate::Governed;
use toolhost::policy::Policy;
use toolhost::secrets::FileAndEnv;
use toolhost::storage::Storage;
use toolhost::storage::postgres;
use toolhost::storage::sqlite::SqliteStorage;
use toolhost::{Error, Result};

/// Where Toolhost keeps its state.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDir {
    /// The data directory (default: $TOOLHOST_DATA_DIR, else
    /// $XDG_DATA_HOME/toolhost, else ~/.local/share/toolhost).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL database shared by many `host serve` replicas and the
    /// admin commands, instead of SQLite in the data dir:
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (TLS: `?sslmode=verify-full`
    /// and `&sslrootcert=FILE`, or `sslmode=require`). Default:
    /// $TOOLHOST_DATABASE_URL (prefer it: a flag's password shows in `ps`).
    /// The data dir then holds only this node's compiled artifacts (and
    /// its audit key unless --audit-key is given).
    #[arg(long, value_name = "URL", global = true)]
    pub database: Option<String>,
    /// The audit signing key (64 hex digits): on a shared database, the same
    /// file on every replica. Default: $TOOLHOST_AUDIT_KEY, else
    /// `<data dir>/audit-signing.key` (created for a fresh store). A key
    /// that is not the one the store's trail was signed with is refused.
    #[arg(long, value_name = "FILE", global = true)]
    pub audit_key: Option<PathBuf>,
}

impl DataDir {
    pub fn path(&self) -> PathBuf {
        if let Some(p) = &self.data_dir {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("TOOLHOST_DATA_DIR") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(p).join("toolhost");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".local/share/toolhost"),
            None => PathBuf::from(".toolhost"),
        }
    }

    /// The PostgreSQL URL, if the store is one (`--database`, else
    /// $TOOLHOST_DATABASE_URL).
    pub fn database_url(&self) -> Result<Option<String>> {
        let url = match &self.database {
            Some(u) => Some(u.clone()),
            None => std::env::var("TOOLHOST_DATABASE_URL")
                .ok()
                .filter(|u| !u.is_empty()),
        };
        match url {
            Some(u) if !postgres::is_url(&u) => Err(Error::invalid_args(format!(
                "--database / TOOLHOST_DATABASE_URL: `{}` is not a postgres:// URL (SQLite needs no URL: it lives in the data dir)",
                postgres::redact(&u)
            ))),
            other => Ok(other),
        }
    }

    /// Where the audit signing key comes from.
    pub fn key_source(&self) -> KeySource {
        let file = self
            .audit_key
            .clone()
            .or_else(|| std::env::var_os("TOOLHOST_AUDIT_KEY").map(PathBuf::from));
        match file {
            Some(f) => KeySource::File(f),
            None => KeySource::DataDir(self.path()),
        }
    }

    /// A description of the store, for logs (no password).
    pub fn describe(&self) -> String {
        match self.database_url() {
            Ok(Some(url)) => postgres::redact(&url),
            _ => self.path().display().to_string(),
        }
    }

    pub async fn storage(&self) -> Result<Arc<dyn Storage>> {
        match self.database_url()? {
            Some(url) => {
                let mut options = postgres::PostgresOptions::new(&url);
                if let Some(n) = setting(
                    "TOOLHOST_DATABASE_POOL",
                    "a number of connections (1 or more)",
                    |v| v.parse::<u32>().ok().filter(|n| *n > 0),
                )? {
                    options.max_connections = n;
                }
                if let Some(keep) =
                    setting("TOOLHOST_DATABASE_KEEP_PLANS", "1 or 0", |v| match v {
                        "1" | "true" | "on" => Some(true),
                        "0" | "false" | "off" => Some(false),
                        _ => None,
                    })?
                {
                    options.keep_plans = keep;
                }
                if let Some(d) = setting(
                    "TOOLHOST_DATABASE_CONNECT_TIMEOUT",
                    "a duration (60s, 2m)",
                    |v| toolhost::limits::parse_duration(v).ok(),
                )? {
                    options.connect_deadline = d;
                }
                Ok(Arc::new(postgres::PostgresStorage::open(&options).await?))
            }
            None => Ok(Arc::new(SqliteStorage::open(&self.path()).await?)),
        }
    }

    pub async fn audit(&self) -> Result<Arc<AuditLog>> {
        AuditLog::open(self.storage().await?, self.key_source()).await
    }
}

/// The environment variable `name` read by `parse`, if it is set; a value
/// `parse` refuses is an error naming the variable and what it takes (never
/// ignored: a pool or timeout silently left at its default is a surprise
/// found under load).
fn setting<T>(name: &str, takes: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        // Set empty (a template's blank): unset, as the database URL.
        Ok(v) if v.trim().is_empty() => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::invalid_args(format!(
            "{name} is not valid UTF-8: it takes {takes}"
        ))),
        Ok(v) => parse(v.trim())
            .map(Some)
            .ok_or_else(|| Error::invalid_args(format!("{name} is `{v}`: it takes {takes}"))),
    }
}

/// The governed gate from a policy file, a data dir and a secrets file.
pub async fn governed(
    data: &DataDir,
    policy: &std::path::Path,
    secrets: Option<&std::path::Path>,
) -> Result<Governed> {
    let policy = Arc::new(Policy::load(policy)?);
    let storage = data.storage().await?;
    let audit = AuditLog::open(storage.clone(), data.key_source()).await?;
    let secrets =
        FileAndEnv::new(secrets).map_err(|e| Error::new(toolhost::ErrorKind::InvalidArgs, e))?;
    Ok(Governed::new(
        policy,
        Ledger::new(storage),
        audit,
        Arc::new(secrets),
    ))
}

/// Parse `2026-11-26`, `2026-11-26T10:00:00Z` (UTC) or Unix milliseconds.
pub fn parse_time(s: &str) -> std::result::Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!("`{s}` is not a time (use 2026-11-26, 2026-11-26T10:00:00Z or Unix milliseconds)")
    };
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':').map(|p| p.parse::<f64>());
    let h = t.next().unwrap_or(Ok(0.0)).map_err(|_| bad())?;
    let min = t.next().unwrap_or(Ok(0.0)).map_err(|_| bad())?;
    let sec = t.next().unwrap_or(Ok(0.0)).map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h >= 24.0 || min >= 60.0 || sec >= 61.0
    {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400_000 + ((h * 3600.0 + min * 60.0 + sec) * 1000.0) as i64)
}
