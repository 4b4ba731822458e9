//! Group commit: requests queue up; one caller at a time takes the turn and
//! commits everything queued meanwhile as one transaction, then answers each
//! waiter. Under load a transaction (its round trips, its locks on the hot
//! rows, its WAL flush) is shared by every request that arrived while the
//! one before it committed; alone, a request commits at once.
//!
//! (A committer on a thread and runtime of its own, as SQLite's writer has,
//! was measured too: slower here, by the cross-thread hand-offs.)

use crate::BoxFuture;
use crate::error::{Error, Result};
use tokio::sync::oneshot;

/// The requests waiting, and (at the same index) where to answer each.
type Queue<T, A> = (Vec<T>, Vec<oneshot::Sender<Result<A>>>);

/// A queue of requests of type `T`, each answered with an `A`. (What
/// waits here is bounded by the requests in flight, which the server
/// bounds.)
pub(super) struct Group<T, A> {
    queue: std::sync::Mutex<Queue<T, A>>,
    turn: tokio::sync::Mutex<()>,
}

impl<T, A> Group<T, A> {
    pub(super) fn new() -> Self {
        Group {
            queue: std::sync::Mutex::new((Vec::new(), Vec::new())),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Queue `request` and wait for its answer, committing batches while it
    /// waits. `take` says how many of the queued requests (at least one) go
    /// into the next batch; `commit` commits a batch and answers each of its
    /// requests in order (an `Err` answers all of them).
    pub(super) async fn submit<'s>(
        &'s self,
        request: T,
        take: impl Fn(&[T]) -> usize,
        commit: impl Fn(Vec<T>) -> BoxFuture<'s, Result<Vec<A>>>,
    ) -> Result<A> {
        let (done, mut wait) = oneshot::channel();
        {
            let mut q = self.lock();
            q.0.push(request);
            q.1.push(done);
        }
        loop {
            let turn = self.turn.lock().await;
            match wait.try_recv() {
                Ok(answer) => return answer,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(Error::internal("a group commit was abandoned"));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let (requests, waiters): Queue<T, A> = {
                let mut q = self.lock();
                let n = if q.0.is_empty() {
                    0
                } else {
                    take(&q.0).clamp(1, q.0.len())
                };
                (q.0.drain(..n).collect(), q.1.drain(..n).collect())
            };
            if requests.is_empty() {
                drop(turn);
                continue;
            }
            let n = requests.len();
            let answered = commit(requests).await;
            drop(turn);
            match answered {
                Ok(answers) if answers.len() == n => {
                    for (answer, done) in answers.into_iter().zip(waiters) {
                        let _ = done.send(Ok(answer));
                    }
                }
                Ok(_) => {
                    for done in waiters {
                        let _ = done.send(Err(Error::internal(
                            "a group commit answered the wrong number of requests",
                        )));
                    }
                }
                Err(e) => {
                    for done in waiters {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T, A>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}
