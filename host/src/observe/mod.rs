//! Observability: Prometheus metrics and OpenTelemetry traces, in one room.
//!
//! The service, the gate, the capability layer and the HTTP adapter call
//! the narrow functions here ([`metrics`]: `invocation`, `outbound`,
//! `spend`, …; [`trace`]: `invocation`, `child`, `outbound`, the
//! `traceparent` helpers); nothing else knows an exporter, a metric name or
//! a label. Both are off until `host serve` turns them on
//! ([`metrics::install`], [`trace::install`]): then every call is a check of
//! a `OnceLock` and returns.
//!
//! Invariants:
//! * Label values that come from tenants (tool, function, workflow,
//!   destination host) are bounded per tenant, and tenants are bounded:
//!   past the bound a value is reported as `other` ([`metrics::Bounds`]).
//!   A tenant with thousands of tools cannot grow the registry.
//! * Trace context comes from the caller only as a validated W3C
//!   `traceparent` ([`trace::parse_traceparent`]); a tool's outbound HTTP
//!   requests carry the host's `traceparent` (the guest's own value is
//!   replaced), so the downstream service joins the invocation's trace.
//! * Nothing here decides anything: a failure to export is logged and
//!   dropped, never an invocation's error.
//!
//! This module sits at the bottom of the layers (like `clock`): it imports
//! nothing above `record` and `error`.

pub mod metrics;
pub mod trace;
