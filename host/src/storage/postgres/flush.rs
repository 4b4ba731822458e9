//! The flush barrier: a unit of work commits without waiting for the WAL
//! flush, and its callers wait for a later commit that does.
//!
//! A batch of units of work used to commit with the server's
//! `synchronous_commit` (on): the committer's turn, and the locks on the
//! batch's hot rows (its chain heads, its budget lines), were held through
//! the flush, so the next batch, and every admission reserving on the same
//! lines, waited for it. Now a batch commits with `synchronous_commit =
//! off` (its locks go at once) and takes a ticket; before any of its
//! callers is answered, a **barrier** commits a transaction that writes
//! WAL under an xid (a transactional logical message, prefix
//! `toolhost.flush`, which changes no table) with the server's setting, so
//! that its commit waits for the WAL flush (and a synchronous standby) up
//! to its own commit record. WAL is flushed in order: when the barrier is
//! durable, so is every commit made before it started. (A transaction that
//! only takes an xid, `SELECT txid_current()`, writes no WAL before its
//! commit record and so commits without waiting: it is no barrier.)
//!
//! Where the barrier cannot run (the function is not executable for the
//! role, as some managed services may set it), units of work commit with
//! the server's setting as before: [`PostgresStorage::probe_barrier`] at
//! start decides, with a warning.
//!
//! Invariants:
//! * nobody is answered for a unit of work before a barrier that started
//!   after its commit returned has returned ([`Flush::deferred`] is taken
//!   after the commit, the barrier covers what was taken before it began);
//! * one barrier at a time: callers that arrive while one runs are covered
//!   by the next, so barriers are shared as commits are;
//! * a barrier that fails answers every caller it was to cover with the
//!   error (their batch is committed, and may or may not be durable: as
//!   for a connection lost while committing); later commits try a new one.
//!
//! What it changes for readers: between a batch's commit and its barrier
//! (one WAL flush), other sessions can see what the batch wrote before it
//! is durable. A crash of the database in that window loses it together
//! with every commit after it, as for admissions; no client of this host
//! was answered on it.

use super::PostgresStorage;
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Commits made without waiting for the flush, and how many of them a
/// barrier has confirmed (or failed to).
#[derive(Default)]
pub(super) struct Flush {
    made: AtomicU64,
    durable: AtomicU64,
    /// The last failed barrier: the tickets it was to cover, and why.
    failed: std::sync::Mutex<Option<(u64, crate::Error)>>,
    turn: tokio::sync::Mutex<()>,
}

/// The barrier's statement: a transactional logical message writes WAL
/// under an xid, so its commit waits for the flush.
const BARRIER: &str = "SELECT pg_logical_emit_message(true, 'toolhost.flush', '')";

impl Flush {
    /// A commit without waiting for the flush has returned: its ticket.
    pub(super) fn deferred(&self) -> u64 {
        self.made.fetch_add(1, SeqCst) + 1
    }

    /// Wait until the commit with `ticket` is covered by a barrier that
    /// started after it, running `barrier` when none has (one at a time).
    /// Ticket 0: committed durably already.
    async fn wait<F, Fut>(&self, ticket: u64, barrier: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if self.durable.load(SeqCst) >= ticket {
            return Ok(());
        }
        let _turn = self.turn.lock().await;
        if self.durable.load(SeqCst) >= ticket {
            return Ok(());
        }
        if let Some((upto, e)) = &*self.failed()
            && *upto >= ticket
        {
            return Err(e.clone());
        }
        // Read before the barrier starts: it covers these commits, and
        // only these.
        let covers = self.made.load(SeqCst);
        match barrier().await {
            Ok(()) => {
                self.durable.fetch_max(covers, SeqCst);
                Ok(())
            }
            Err(e) => {
                *self.failed() = Some((covers, e.clone()));
                Err(e)
            }
        }
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, Option<(u64, crate::Error)>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PostgresStorage {
    /// Whether the barrier runs here (see the module docs): if not, units
    /// of work commit with the server's setting, and a warning says why.
    pub(super) async fn probe_barrier(pool: &sqlx::PgPool) -> bool {
        match sqlx::query(BARRIER).execute(pool).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    "units of work commit waiting for the WAL flush, holding their locks through \
                     it: the flush barrier ({BARRIER}) cannot run here: {e}"
                );
                false
            }
        }
    }

    /// Wait until the commit with `ticket` is durable (see the module docs).
    pub(super) async fn flushed(&self, ticket: u64) -> Result<()> {
        self.flush
            .wait(ticket, || async {
                let mut attempt = 0u32;
                loop {
                    match sqlx::query(BARRIER).execute(&self.pool).await {
                        Ok(_) => return Ok(()),
                        Err(e)
                            if (super::retryable(&e) || super::lost(&e))
                                && attempt < super::ATTEMPTS =>
                        {
                            attempt += 1;
                            super::backoff(attempt).await;
                        }
                        Err(e) => return Err(super::db(e)),
                    }
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_commit_made_while_a_barrier_runs_waits_for_the_next() {
        let flush = Arc::new(Flush::default());
        let barriers = Arc::new(AtomicUsize::new(0));
        let first = flush.deferred();
        let started = Arc::new(tokio::sync::Notify::new());
        let (go, release) = tokio::sync::oneshot::channel::<()>();
        let waiting = {
            let (flush, barriers, started) = (flush.clone(), barriers.clone(), started.clone());
            tokio::spawn(async move {
                flush
                    .wait(first, || async move {
                        barriers.fetch_add(1, SeqCst);
                        started.notify_one();
                        let _ = release.await;
                        Ok(())
                    })
                    .await
            })
        };
        started.notified().await;
        // Committed while the first barrier is in flight: not covered by it.
        let second = flush.deferred();
        let _ = go.send(());
        waiting.await.unwrap().unwrap();
        assert_eq!(flush.durable.load(SeqCst), first);
        let b = barriers.clone();
        flush
            .wait(second, || async move {
                b.fetch_add(1, SeqCst);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            barriers.load(SeqCst),
            2,
            "the second commit got a barrier of its own"
        );
        // Covered commits need no barrier; several commits share one.
        let (c, d) = (flush.deferred(), flush.deferred());
        let b = barriers.clone();
        flush
            .wait(d, || async move {
                b.fetch_add(1, SeqCst);
                Ok(())
            })
            .await
            .unwrap();
        flush.wait(c, || async { panic!("covered") }).await.unwrap();
        assert_eq!(barriers.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_barrier_fails_every_caller_it_covered_and_the_next_tries_again() {
        let flush = Flush::default();
        let (t1, t2) = (flush.deferred(), flush.deferred());
        let e = flush
            .wait(t1, || async {
                Err(crate::Error::internal("the database went away"))
            })
            .await;
        assert!(e.is_err());
        assert_eq!(flush.durable.load(SeqCst), 0, "nothing is confirmed");
        // The other caller it covered gets its answer, without a barrier
        // of its own (during an outage, each would wait out the pool).
        let e = flush
            .wait(t2, || async { panic!("covered by the failed one") })
            .await;
        assert_eq!(e.unwrap_err().message, "the database went away");
        // A commit after it tries again.
        let t3 = flush.deferred();
        flush.wait(t3, || async { Ok(()) }).await.unwrap();
        assert_eq!(flush.durable.load(SeqCst), t3);
        // Ticket 0: durable already.
        flush
            .wait(0, || async { panic!("no barrier") })
            .await
            .unwrap();
    }
}
