//! Fair admission: the server's request slots shared among tenants.
//!
//! At most `max_running` requests hold a slot at once, and at most
//! `tenant_running` of them belong to one tenant. A request that cannot run
//! at once waits in its tenant's queue: at most `max_queue` wait in all and
//! `tenant_queue` per tenant. Beyond those the request is refused at once:
//! [`Refusal::Full`] (503) when the server's queue is full, otherwise
//! [`Refusal::Tenant`] (429) when the tenant's own queue is.
//!
//! Invariants: when a slot frees, it goes to a tenant in turn, not to the
//! oldest waiter overall: among the tenants that have waiters and are under
//! their cap, the one served longest ago (a tenant with nothing running or
//! waiting starts afresh, as never served; ties go to the earliest waiter),
//! and within that tenant to its oldest waiter. A tenant that gets a slot
//! goes to the back of the line, so one tenant with many slow requests
//! delays another tenant's request by at most one turn, never by its whole
//! backlog. A slot is released when its
//! [`Slot`] drops; a waiter that gives up (deadline, client gone) leaves the
//! queue, and a slot granted to it at the same moment is handed on. The
//! per-tenant state exists only while the tenant has requests running or
//! waiting, so memory is bounded by the slots and the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The limits.
#[derive(Debug, Clone, Copy)]
pub struct FairLimits {
    /// Slots in all.
    pub max_running: usize,
    /// Waiters in all.
    pub max_queue: usize,
    /// Slots one tenant may hold.
    pub tenant_running: usize,
    /// Waiters one tenant may have.
    pub tenant_queue: usize,
}

/// Why a request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server's queue is full.
    Full,
    /// The tenant holds its share of slots and its queue is full.
    Tenant,
    /// The deadline passed while waiting.
    Deadline,
}

/// The shared slots.
pub struct FairSlots {
    limits: FairLimits,
    shared: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    free: usize,
    waiting: usize,
    /// Ids of waiters, in arrival order.
    next_id: u64,
    /// Counts grants: a tenant's `served` is the tick of its last one.
    tick: u64,
    /// Tenants with something running or waiting.
    tenants: HashMap<Arc<str>, Tenant>,
    /// The tenants with waiters.
    queued: Vec<Arc<str>>,
}

#[derive(Default)]
struct Tenant {
    running: usize,
    served: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A held slot; dropping it frees the slot.
pub struct Slot {
    shared: Arc<Mutex<State>>,
    tenant_running: usize,
    tenant: Arc<str>,
}

/// A place in a tenant's queue; dropping it leaves the queue (or, if the
/// slot was granted meanwhile, hands the slot on).
struct Ticket {
    shared: Arc<Mutex<State>>,
    tenant_running: usize,
    tenant: Arc<str>,
    id: u64,
    /// Told when the slot is granted. Inside the ticket, so that it is
    /// dropped only after the ticket has left the queue under the lock.
    granted: oneshot::Receiver<()>,
    done: bool,
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl FairSlots {
    pub fn new(limits: FairLimits) -> FairSlots {
        let limits = FairLimits {
            max_running: limits.max_running.max(1),
            tenant_running: limits.tenant_running.clamp(1, limits.max_running.max(1)),
            ..limits
        };
        FairSlots {
            shared: Arc::new(Mutex::new(State {
                free: limits.max_running,
                ..State::default()
            })),
            limits,
        }
    }

    /// Slots held, and requests waiting for one, now.
    pub fn counts(&self) -> (usize, usize) {
        let state = lock(&self.shared);
        (
            self.limits.max_running.saturating_sub(state.free),
            state.waiting,
        )
    }

    /// A slot for `tenant`, waiting for one until `deadline` if need be.
    pub async fn acquire(&self, tenant: &str, deadline: Instant) -> Result<Slot, Refusal> {
        let mut ticket = {
            let mut state = lock(&self.shared);
            let key: Arc<str> = match state.tenants.get_key_value(tenant) {
                Some((k, _)) => k.clone(),
                None => Arc::from(tenant),
            };
            let (free, tick) = (state.free, state.tick + 1);
            let t = state.tenants.entry(key.clone()).or_default();
            if free > 0 && t.running < self.limits.tenant_running && t.queue.is_empty() {
                t.running += 1;
                t.served = tick;
                state.free -= 1;
                state.tick = tick;
                return Ok(self.slot(key));
            }
            let queued = t.queue.len();
            let refusal = if state.waiting >= self.limits.max_queue {
                Some(Refusal::Full)
            } else if queued >= self.limits.tenant_queue {
                Some(Refusal::Tenant)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                forget_if_idle(&mut state, &key);
                return Err(refusal);
            }
            let id = state.next_id;
            state.next_id += 1;
            let (tx, rx) = oneshot::channel();
            let t = state.tenants.entry(key.clone()).or_default();
            t.queue.push_back((id, tx));
            if queued == 0 {
                state.queued.push(key.clone());
            }
            state.waiting += 1;
            tracing::debug!(tenant, waiting = state.waiting, "queued for a slot");
            Ticket {
                shared: self.shared.clone(),
                tenant_running: self.limits.tenant_running,
                tenant: key,
                id,
                granted: rx,
                done: false,
            }
        };
        match tokio::time::timeout_at(deadline, &mut ticket.granted).await {
            Ok(Ok(())) => {
                ticket.done = true;
                Ok(self.slot(ticket.tenant.clone()))
            }
            // The sender is only dropped after a grant or with the ticket.
            Ok(Err(_)) | Err(_) => Err(Refusal::Deadline),
        }
    }

    fn slot(&self, tenant: Arc<str>) -> Slot {
        Slot {
            shared: self.shared.clone(),
            tenant_running: self.limits.tenant_running,
            tenant,
        }
    }
}

/// Give free slots to waiters: each to the eligible tenant served longest
/// ago.
fn dispatch(state: &mut State, tenant_running: usize) {
    while state.free > 0 {
        let next = state
            .queued
            .iter()
            .enumerate()
            .filter_map(|(i, key)| {
                let t = state.tenants.get(key)?;
                let first = t.queue.front()?.0;
                (t.running < tenant_running).then_some(((t.served, first), i))
            })
            .min();
        let Some((_, i)) = next else {
            break;
        };
        let key = state.queued[i].clone();
        let tick = state.tick + 1;
        let Some(t) = state.tenants.get_mut(&key) else {
            state.queued.swap_remove(i);
            continue;
        };
        let Some((_, tx)) = t.queue.pop_front() else {
            state.queued.swap_remove(i);
            continue;
        };
        let now_empty = t.queue.is_empty();
        // The receiver lives in a ticket whose drop takes this lock first
        // and leaves the queue: a waiter still queued is still listening.
        // (Were it not, its ticket sees nothing was granted.)
        let granted = tx.send(()).is_ok();
        if granted {
            t.running += 1;
            t.served = tick;
        }
        state.waiting -= 1;
        if granted {
            state.free -= 1;
            state.tick = tick;
        }
        if now_empty {
            state.queued.swap_remove(i);
            forget_if_idle(state, &key);
        }
    }
}

/// Drop a tenant's entry once it has nothing running or waiting.
fn forget_if_idle(state: &mut State, key: &Arc<str>) {
    if state
        .tenants
        .get(key)
        .is_some_and(|t| t.running == 0 && t.queue.is_empty())
    {
        state.tenants.remove(key);
    }
}

/// Free one slot of `tenant` and hand it on.
fn release(state: &mut State, tenant: &Arc<str>, tenant_running: usize) {
    if let Some(t) = state.tenants.get_mut(tenant) {
        t.running = t.running.saturating_sub(1);
    }
    state.free += 1;
    forget_if_idle(state, tenant);
    dispatch(state, tenant_running);
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        release(&mut state, &self.tenant, self.tenant_running);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = lock(&self.shared);
        let queued = state.tenants.get_mut(&self.tenant).and_then(|t| {
            let at = t.queue.iter().position(|(id, _)| *id == self.id)?;
            t.queue.remove(at);
            Some(t.queue.is_empty())
        });
        match queued {
            Some(now_empty) => {
                state.waiting -= 1;
                if now_empty {
                    state.queued.retain(|k| k != &self.tenant);
                    forget_if_idle(&mut state, &self.tenant);
                }
            }
            // Granted while giving up: the slot is ours to hand on.
            None if self.granted.try_recv().is_ok() => {
                release(&mut state, &self.tenant, self.tenant_running)
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(max_running: usize, tenant_running: usize, tenant_queue: usize) -> FairSlots {
        FairSlots::new(FairLimits {
            max_running,
            max_queue: 100,
            tenant_running,
            tenant_queue,
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn gone() -> Instant {
        Instant::now()
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_tenants_in_turn_not_to_the_oldest_waiter() {
        let s = Arc::new(slots(1, 1, 10));
        let held = s.acquire("a", soon()).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, tenant) in ["a", "a", "a", "b", "c"].into_iter().enumerate() {
            let (s2, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let slot = s2.acquire(tenant, soon()).await.unwrap();
                order.lock().unwrap().push(format!("{tenant}{i}"));
                drop(slot);
            }));
            // Queued in this order.
            while lock(&s.shared).waiting < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        // a was served last (the held slot): b and c, waiting behind a's
        // backlog, go first.
        assert_eq!(*order.lock().unwrap(), ["b3", "c4", "a0", "a1", "a2"]);
        let state = lock(&s.shared);
        assert!(state.tenants.is_empty() && state.queued.is_empty());
        assert_eq!((state.free, state.waiting), (1, 0));
    }

    #[tokio::test]
    async fn a_tenant_at_its_cap_waits_while_others_run() {
        let s = slots(3, 1, 1);
        let _a = s.acquire("a", soon()).await.unwrap();
        // a is at its cap: it waits (here: gives up at once), b runs.
        assert_eq!(s.acquire("a", gone()).await.err(), Some(Refusal::Deadline));
        let _b = s.acquire("b", soon()).await.unwrap();
        let state = lock(&s.shared);
        assert_eq!((state.free, state.waiting), (1, 0));
    }

    #[tokio::test]
    async fn queues_are_capped_per_tenant_and_in_all() {
        let s = Arc::new(FairSlots::new(FairLimits {
            max_running: 1,
            max_queue: 2,
            tenant_running: 1,
            tenant_queue: 1,
        }));
        let _a = s.acquire("a", soon()).await.unwrap();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("a", soon()).await.map(|_| ()) })
        };
        while lock(&s.shared).waiting < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.acquire("a", soon()).await.err(), Some(Refusal::Tenant));
        let b = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("b", soon()).await.map(|_| ()) })
        };
        while lock(&s.shared).waiting < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.acquire("c", soon()).await.err(), Some(Refusal::Full));
        waiter.abort();
        b.abort();
        let _ = waiter.await;
        let _ = b.await;
        // Cancelled waiters left the queue.
        let state = lock(&s.shared);
        assert_eq!(state.waiting, 0);
        assert!(state.queued.is_empty());
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_waiter_that_gives_up_is_handed_on() {
        let s = slots(1, 1, 10);
        let held = s.acquire("a", soon()).await.unwrap();
        let shared = s.shared.clone();
        let mut gives_up = Box::pin(s.acquire("b", soon()));
        assert!(futures_poll(gives_up.as_mut()).is_none());
        // The slot is granted to b, which then goes away before taking it.
        drop(held);
        drop(gives_up);
        let state = lock(&shared);
        assert_eq!((state.free, state.waiting), (1, 0));
        assert!(state.tenants.is_empty());
    }

    /// Poll a future once.
    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
