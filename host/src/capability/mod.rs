//! Capabilities a tool may use, each one room: its wiring into the sandbox
//! and its mediation by the gate.
//!
//! * [`http`]: `wasi:http/outgoing-handler`, mediated in `WasiHttpHooks::send_request`.
//! * [`sockets`]: `wasi:sockets`, mediated by the socket address check.
//! * [`log`]: `toolhost:tool/log`, bounded structured log lines.
//! * Files and environment variables are granted up front by
//!   [`crate::gate::Grants`] and wired in [`crate::sandbox`].
//!
//! Every outbound use goes through one [`Mediator`] per invocation, which asks
//! the gate and records the decision — and, for HTTP, what happened — as a
//! [`CapabilityEvent`].

pub mod grant;
pub mod http;
pub mod log;
pub mod sockets;

pub use grant::{Grants, HttpPermit, OutboundCall, Preopen, Verdict};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What happened to an allowed outbound call.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CallResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Response body bytes the guest read.
    pub response_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Why it failed or was stopped after the gate allowed it (a refused
    /// address, a timeout, the response cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One outbound use of a capability and the gate's decision on it.
#[derive(Debug, Clone, Serialize)]
pub struct CapabilityEvent {
    #[serde(flatten)]
    pub call: OutboundCall,
    pub allowed: bool,
    pub rule: String,
    /// Milliseconds since the invocation started.
    pub at_ms: u64,
    #[serde(flatten)]
    pub result: CallResult,
}

/// Decides the outbound calls of one running invocation (the gate, with
/// the invocation's admission): the one hook where the embedder mediates.
pub trait Decide: Send + Sync {
    fn decide(&self, call: &OutboundCall) -> Verdict;
}

/// The per-invocation link between running guest code and the gate.
pub struct Mediator {
    decide: Arc<dyn Decide>,
    started: Instant,
    events: Mutex<Vec<CapabilityEvent>>,
}

/// Events kept per invocation; a guest looping on denied calls cannot grow
/// the log without bound.
const MAX_EVENTS: usize = 1024;

impl Mediator {
    pub fn new(decide: Arc<dyn Decide>) -> Arc<Self> {
        Arc::new(Mediator {
            decide,
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
        })
    }

    /// Ask the gate about one outbound call and record its answer. Returns
    /// the verdict and the event's index, for [`Mediator::update`].
    pub fn check(&self, call: OutboundCall) -> (Verdict, Option<usize>) {
        let verdict = self.decide.decide(&call);
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let index = (events.len() < MAX_EVENTS).then(|| {
            events.push(CapabilityEvent {
                call,
                allowed: verdict.allowed,
                rule: verdict.rule.clone(),
                at_ms: self.started.elapsed().as_millis() as u64,
                result: CallResult::default(),
            });
            events.len() - 1
        });
        (verdict, index)
    }

    /// Record what happened to an allowed call; `refused` turns it into a
    /// denial with that rule (e.g. its address was off limits).
    pub fn update(
        &self,
        index: Option<usize>,
        f: impl FnOnce(&mut CallResult),
        refused: Option<String>,
    ) {
        let Some(i) = index else { return };
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = events.get_mut(i) {
            f(&mut e.result);
            if let Some(rule) = refused {
                e.allowed = false;
                e.rule = rule;
            }
        }
    }

    /// The recorded events.
    pub fn events(&self) -> Vec<CapabilityEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The first denied call, if any.
    pub fn first_denial(&self) -> Option<CapabilityEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| !e.allowed)
            .cloned()
    }
}
