//! Toolhost: a WebAssembly tool sandbox host for AI agents.
//!
//! A tool is a WebAssembly component with a WIT interface. Every invocation
//! runs in a fresh instance under fuel, memory, wall-clock and capability
//! limits, and passes one gate (policy → budget → audit). See
//! `ARCHITECTURE.md` for the code map.

pub mod approvals;
pub mod audit;
pub mod budget;
pub mod callback;
pub mod capability;
pub mod clock;
pub mod datadir;
pub mod error;
pub mod gate;
pub mod idempotency;
pub mod ids;
pub mod invoke;
pub mod keys;
pub mod lease;
pub mod limits;
pub mod mcp;
pub mod observe;
pub mod policy;
pub mod record;
pub mod registry;
pub mod runtime;
pub mod sandbox;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod service;
pub mod stats;
pub mod storage;
pub mod tool;
pub mod value;

pub use error::{Error, ErrorKind, Result};

/// A boxed future: what object-safe async traits (the gate, storage) return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub use invoke::{Call, Host, Outcome, Usage};
pub use limits::Limits;
pub use runtime::{Runtime, RuntimeConfig};
pub use tool::{LoadOptions, Tool};
