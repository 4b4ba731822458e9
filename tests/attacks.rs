//! Regression tests for the attacks adversarial testing found (issue 10):
//! each reproduces an attack on today's interfaces and asserts it is
//! contained.

mod common;

#[path = "attacks/args.rs"]
mod args;

#[path = "attacks/audit.rs"]
mod audit;

#[path = "attacks/secrets.rs"]
mod secrets;

#[path = "attacks/server.rs"]
mod server;

#[path = "attacks/callbacks.rs"]
mod callbacks;

#[path = "attacks/compile.rs"]
mod compile;

#[path = "attacks/review.rs"]
mod review;
