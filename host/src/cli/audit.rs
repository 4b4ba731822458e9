//! `host audit verify | export | prune | upgrade`.

use super::data::{DataDir, parse_time};
use std::path::PathBuf;
use toolhost::audit::{chain_of, verify};
use toolhost::{Error, ErrorKind};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check the audit trail (or an export file) for modified, removed,
    /// inserted, reordered or truncated records; say where. Exit 1 if any.
    Verify {
        #[command(flatten)]
        data: DataDir,
        /// Only this tenant's chain.
        #[arg(long)]
        tenant: Option<String>,
        /// Verify an export file instead of the data dir.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// The public key to trust (hex); default: the data dir's, or the
        /// export's own (which proves integrity, not origin).
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a tenant's records as JSON lines, with what an independent
    /// verifier needs (public key, checkpoints, a signed export checkpoint).
    Export {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        tenant: Option<String>,
        /// Records at or after this time (2026-11-26, 2026-11-26T10:00:00Z, Unix ms).
        #[arg(long)]
        since: Option<String>,
        /// Records before this time.
        #[arg(long)]
        until: Option<String>,
        /// Output file (default: stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Delete records older than the retention period, keeping the rest
    /// verifiable.
    Prune {
        #[command(flatten)]
        data: DataDir,
        /// Keep this many days (default: the policy's logging.retain_days).
        #[arg(long)]
        days: Option<u32>,
        /// The policy whose logging.retain_days applies: each chain is pruned
        /// as `host serve` would, to the longest retention of the documents
        /// that may govern its tenant (kept whole if one of them sets none).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Re-sign, as signed statements, what a store written by a Toolhost
    /// before statements (0.1) still vouches for with its legacy signatures.
    /// Trusts the few unsigned records a legacy chain may end with. Never run
    /// it on a store this version wrote: an intruder who stripped its
    /// statements would have them re-signed.
    Upgrade {
        #[command(flatten)]
        data: DataDir,
    },
}

pub async fn main(cmd: Command) -> i32 {
    match run(cmd).await {
        Ok(code) => code,
        Err(e) => {
            super::report(&e);
            1
        }
    }
}

async fn run(cmd: Command) -> toolhost::Result<i32> {
    match cmd {
        Command::Verify {
            data,
            tenant,
            file,
            public_key,
            json,
        } => {
            let report = match file {
                Some(path) => {
                    let f = std::fs::File::open(&path).map_err(|e| {
                        Error::invalid_args(format!("cannot read {}: {e}", path.display()))
                    })?;
                    verify::verify_export(&mut std::io::BufReader::new(f), public_key.as_deref())?
                }
                None => {
                    let log = toolhost::audit::AuditLog::open_for_reading(
                        data.storage().await?,
                        data.key_source(),
                    )
                    .await?;
                    let key = match &public_key {
                        Some(k) => verify::parse_key(k).map_err(Error::invalid_args)?,
                        None => verify::parse_key(&log.public_key()).map_err(Error::internal)?,
                    };
                    let chain = tenant.as_deref().map(|t| chain_of(Some(t)));
                    let started = std::time::Instant::now();
                    let report = verify::verify(log.storage(), &key, chain.as_deref()).await?;
                    let secs = started.elapsed().as_secs_f64();
                    if !json {
                        eprintln!(
                            "checked {} records in {:.3}s ({:.0} records/s)",
                            report.entries,
                            secs,
                            report.entries as f64 / secs.max(1e-9)
                        );
                    }
                    report
                }
            };
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                for p in &report.problems {
                    out!("trail: {p}");
                }
                for c in &report.chains {
                    let status = if c.problems.is_empty() {
                        "ok"
                    } else {
                        "TAMPERED"
                    };
                    out!("chain {}: {} records: {status}", c.chain, c.entries);
                    for p in &c.problems {
                        out!("  - {p}");
                    }
                }
                out!(
                    "{}",
                    if report.ok {
                        "verified"
                    } else {
                        "verification FAILED"
                    }
                );
            }
            Ok(if report.ok { 0 } else { 1 })
        }
        Command::Export {
            data,
            tenant,
            since,
            until,
            output,
        } => {
            let since = since
                .map(|s| parse_time(&s))
                .transpose()
                .map_err(Error::invalid_args)?;
            let until = until
                .map(|s| parse_time(&s))
                .transpose()
                .map_err(Error::invalid_args)?;
            let log = toolhost::audit::AuditLog::open_for_reading(
                data.storage().await?,
                data.key_source(),
            )
            .await?;
            let chain = chain_of(tenant.as_deref());
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
                    |e| {
                        Error::new(
                            ErrorKind::InvalidArgs,
                            format!("cannot write {}: {e}", p.display()),
                        )
                    },
                )?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let n = verify::export(&log, &chain, since, until, out.as_mut()).await?;
            out.flush()
                .map_err(|e| Error::internal(format!("writing the export: {e}")))?;
            eprintln!("exported {n} records of chain {chain}");
            Ok(0)
        }
        Command::Prune {
            data,
            days,
            policy,
            tenant,
        } => {
            // `--days` for every chain; or, from `--policy`, what `host serve`
            // prunes a chain to: the longest `logging.retain_days` of the
            // documents that may govern its tenant, and nothing when one of
            // them keeps records forever.
            let policy = match (days, policy) {
                (Some(_), _) => None,
                (None, Some(p)) => Some(toolhost::policy::Policy::load(&p)?),
                (None, None) => return Err(Error::invalid_args("pass --days N or --policy FILE")),
            };
            let log = data.audit().await?;
            let now = toolhost::clock::now_ms();
            let chains = match &tenant {
                Some(t) => vec![chain_of(Some(t))],
                None => log.storage().audit_chains().await?,
            };
            let mut pruned_any = false;
            let mut failed = 0;
            for chain in &chains {
                let retain = days.or_else(|| policy.as_ref()?.retain_days(Some(chain)));
                let Some(days) = retain else {
                    out!(
                        "chain {chain}: kept whole (a policy document that may govern it sets no logging.retain_days)"
                    );
                    continue;
                };
                pruned_any = true;
                // One chain that cannot be pruned (it does not verify) does
                // not keep the others from their retention.
                match log.prune(chain, days, now).await {
                    Ok(n) => out!("chain {chain}: pruned {n} records older than {days} days"),
                    Err(e) => {
                        failed += 1;
                        eprintln!(
                            "chain {chain}: NOT pruned: error[{}]: {}",
                            e.kind, e.message
                        );
                    }
                }
            }
            if !pruned_any && !chains.is_empty() {
                return Err(Error::invalid_args(
                    "the policy sets no logging.retain_days for these chains; pass --days",
                ));
            }
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Command::Upgrade { data } => {
            let done =
                toolhost::audit::AuditLog::upgrade_legacy(data.storage().await?, data.key_source())
                    .await?;
            for c in &done.chains {
                out!("chain {c}: re-signed");
            }
            for (c, why) in &done.refused {
                out!("chain {c}: NOT upgraded: {why}");
            }
            out!("{} statements signed", done.checkpoints);
            Ok(if done.refused.is_empty() { 0 } else { 1 })
        }
    }
}

use std::io::Write as _;
