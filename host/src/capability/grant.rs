//! The vocabulary between the sandbox and whoever mediates it: what a guest
//! is granted up front ([`Grants`]), what it asks for while it runs
//! ([`OutboundCall`]) and the answer ([`Verdict`], [`HttpPermit`]).
//!
//! These types live with the capabilities (below the gate): the gate
//! produces and consumes them, the sandbox only carries them.

use crate::secrets::Secret;
use ipnet::IpNet;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// A directory the guest may see.
#[derive(Debug, Clone, Serialize)]
pub struct Preopen {
    pub host_path: std::path::PathBuf,
    pub guest_path: String,
    pub writable: bool,
}

/// Capabilities granted to one invocation up front. Empty by default: no
/// files, no environment, no name lookups. (Outbound HTTP and socket
/// addresses are decided per call by [`Decide::decide`](super::Decide).)
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Values may be secrets: they are never logged or audited.
    pub env: Vec<(String, Secret)>,
    pub preopens: Vec<Preopen>,
    pub ip_name_lookup: bool,
}

/// An outbound use of a capability by a running guest.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "capability", rename_all = "snake_case")]
pub enum OutboundCall {
    Http {
        method: String,
        scheme: String,
        host: String,
        port: u16,
        /// Path without the query string (queries may carry secrets).
        path: String,
    },
    Socket {
        addr: SocketAddr,
        /// `tcp-bind`, `tcp-listen`, `tcp-accept`, `tcp-connect`, `udp-bind`, `udp-send`, `udp-receive`.
        operation: &'static str,
    },
}

impl OutboundCall {
    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        match self {
            OutboundCall::Http {
                method,
                scheme,
                host,
                port,
                path,
            } => format!("HTTP {method} {scheme}://{host}:{port}{path}"),
            OutboundCall::Socket { addr, operation } => format!("socket {operation} {addr}"),
        }
    }
}

/// How an allowed HTTP request is to be sent.
#[derive(Debug, Clone, Default)]
pub struct HttpPermit {
    /// Headers set at the host boundary (values may hold secrets).
    pub headers: Vec<(String, Secret)>,
    /// Secrets the guest may name in its own header values
    /// (`{{secret:NAME}}`), substituted at the boundary.
    pub secrets: Vec<(String, Secret)>,
    pub max_response_bytes: u64,
    pub timeout: Option<Duration>,
    /// Restricted address ranges the destination may resolve to anyway.
    pub allow_cidrs: Vec<IpNet>,
    /// An `Idempotency-Key` to send, if the invocation has one.
    pub idempotency_key: Option<String>,
    /// The secret values this request carries (in `headers`, or substituted
    /// from `secrets`): scrubbed from the response before the guest reads it.
    pub injected: Vec<Secret>,
}

/// The gate's answer to an outbound call.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub allowed: bool,
    /// The rule that decided.
    pub rule: String,
    /// For an allowed HTTP request: how to send it.
    pub http: Option<HttpPermit>,
}

impl Verdict {
    pub fn deny(rule: impl Into<String>) -> Verdict {
        Verdict {
            allowed: false,
            rule: rule.into(),
            http: None,
        }
    }
}
