//! Who runs what, and for how long: this host instance's identity and the
//! leases it holds on the invocations it runs.
//!
//! Every running invocation row names its owner (an [`Instance`] id, new
//! each time a host starts) and a `lease_until`. The owner renews the leases
//! of the invocations it is running ([`Live`]); a row whose lease ran out
//! belongs to a host that died or hung, and the reaper finishes it. Nothing
//! decides liveness from how long something "should" take.

use crate::clock::{Clock, SystemClock};
use crate::ids::InvocationId;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a lease holds unless renewed, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// This host instance.
pub struct Instance {
    /// `hst_` and 16 random hex digits: new every start.
    pub id: String,
    pub clock: Arc<dyn Clock>,
    /// How long a lease holds unless renewed (renewed every third of it).
    pub lease: Duration,
    live: Arc<Live>,
}

impl Instance {
    pub fn new(clock: Arc<dyn Clock>, lease: Duration) -> Arc<Instance> {
        use rand_core::RngCore;
        let mut bytes = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut bytes);
        Arc::new(Instance {
            id: format!("hst_{}", hex::encode(bytes)),
            clock,
            lease,
            live: Arc::new(Live::default()),
        })
    }

    /// An instance on the system clock with the default lease.
    pub fn system() -> Arc<Instance> {
        Instance::new(Arc::new(SystemClock), DEFAULT_LEASE)
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// When a lease taken now ends.
    pub fn lease_until(&self) -> i64 {
        self.now_ms()
            .saturating_add(i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX))
    }

    /// The invocations this instance is running.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Instance({})", self.id)
    }
}

/// The ids of the invocations this instance is running: their leases are
/// renewed. An id leaves the set when its [`Running`] guard drops (the
/// invocation ended, or its task panicked): a lease that stops being
/// renewed runs out.
#[derive(Debug, Default)]
pub struct Live {
    ids: Mutex<HashSet<InvocationId>>,
    /// Invocations whose task ended without recording their end (a host
    /// fault, a panic): the reaper finishes them at once.
    abandoned: Mutex<Vec<InvocationId>>,
    /// Wakes the reaper when something is abandoned.
    pub wake: tokio::sync::Notify,
}

impl Live {
    /// Note `id` as running until the guard drops.
    pub fn enter(self: &Arc<Self>, id: &InvocationId) -> Running {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        Running {
            live: self.clone(),
            id: id.clone(),
            recorded: false,
        }
    }

    /// Take the ids abandoned since the last call.
    pub fn take_abandoned(&self) -> Vec<InvocationId> {
        std::mem::take(&mut *self.abandoned.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn ids(&self) -> Vec<InvocationId> {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A running invocation's place in [`Live`]. Dropped without
/// [`Running::ended`]`(true)` (its end was not recorded, or its task
/// panicked), it reports the invocation abandoned.
#[derive(Debug)]
pub struct Running {
    live: Arc<Live>,
    id: InvocationId,
    recorded: bool,
}

impl Running {
    pub fn id(&self) -> &InvocationId {
        &self.id
    }

    /// The invocation's task is over; `recorded`: its end is in the store.
    pub fn ended(mut self, recorded: bool) {
        self.recorded = recorded;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.live
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if !self.recorded {
            self.live
                .abandoned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.id.clone());
            self.live.wake.notify_one();
        }
    }
}
