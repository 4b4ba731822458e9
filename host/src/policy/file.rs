//! The policy file format: the essay's example verbatim, plus extensions.
//!
//! A policy file is one or more YAML documents (separated by `---`). Each
//! document governs one workflow (`workflow: "*"` for any), optionally for one
//! tenant only. Every field is checked while parsing, so an invalid file is
//! rejected with its file, line and the path of the offending field.

use super::outbound::{HostPattern, SocketGrant};
use crate::limits::{parse_bytes, parse_duration};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One policy document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The workflow this document governs; `"*"` for any.
    pub workflow: String,
    /// The tenant this document governs; absent for every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub policy: Rules,
    #[serde(default)]
    pub approval: Approval,
    #[serde(default)]
    pub logging: Logging,
    /// Per-tool grants, limits and prices, keyed by tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, std::sync::Arc<ToolSettings>>,
    /// Raw Cedar policies, added to the generated ones.
    #[serde(default)]
    pub cedar: Option<String>,
}

/// Budget limits. The top-level limits apply per task.
///
/// The per-task fields repeat [`Limits`] rather than `#[serde(flatten)]` it:
/// serde cannot combine `flatten` with `deny_unknown_fields`, and a typo'd
/// budget key must be an error, not a silently unlimited budget.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub max_tool_calls: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_outbound_calls: Option<u64>,
    pub max_fuel: Option<u64>,
    pub max_wall_ms: Option<u64>,
    #[serde(default, deserialize_with = "usd_opt")]
    pub max_cost_usd: Option<f64>,
    /// Limits on all tasks of this workflow together.
    #[serde(default)]
    pub per_workflow: Windows,
    /// Limits on everything the tenant runs.
    #[serde(default)]
    pub per_tenant: Windows,
}

impl Budget {
    /// The per-task limits.
    pub fn per_task(&self) -> Limits {
        Limits {
            max_tool_calls: self.max_tool_calls,
            max_input_tokens: self.max_input_tokens,
            max_output_tokens: self.max_output_tokens,
            max_outbound_calls: self.max_outbound_calls,
            max_fuel: self.max_fuel,
            max_wall_ms: self.max_wall_ms,
            max_cost_usd: self.max_cost_usd,
        }
    }
}

/// Limits per day and per month (UTC calendar windows).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Windows {
    #[serde(default)]
    pub day: Option<Limits>,
    #[serde(default)]
    pub month: Option<Limits>,
}

/// Spending limits; absent means unlimited.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_tool_calls: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_outbound_calls: Option<u64>,
    pub max_fuel: Option<u64>,
    pub max_wall_ms: Option<u64>,
    #[serde(default, deserialize_with = "usd_opt")]
    pub max_cost_usd: Option<f64>,
}

/// Which tools may run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Tools that may run. Absent or empty: none (deny by default).
    #[serde(default)]
    pub allow_tools: Vec<String>,
    /// Tools that may never run autonomously. With an approval rule, they run
    /// only once a human approves; without one, never.
    #[serde(default)]
    pub deny_tools: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default)]
    pub required_for: Vec<ApprovalRule>,
}

/// A human must approve calls of `tool` whose amount exceeds `threshold_usd`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    pub tool: String,
    /// Absent: every call needs approval.
    #[serde(default, deserialize_with = "usd_opt")]
    pub threshold_usd: Option<f64>,
    /// Where the amount is in the arguments: a JSON pointer (`/refund/amount`)
    /// or a dotted path (`refund.amount`). Default: the `amount_usd` argument.
    #[serde(default)]
    pub amount_field: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// Audit records older than this many days may be pruned.
    #[serde(default)]
    pub retain_days: Option<u32>,
    /// Argument/result fields replaced by `"[REDACTED]"`, at any depth, in
    /// the audit's copies.
    #[serde(default)]
    pub redact_fields: Vec<String>,
}

/// Grants, limits and prices for one tool.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSettings {
    #[serde(default)]
    pub limits: ToolLimits,
    #[serde(default)]
    pub price: Price,
    /// Outbound HTTP the tool may make.
    #[serde(default)]
    pub http: Vec<HttpGrant>,
    /// Address ranges a granted host may resolve to even though they are
    /// private, loopback or link-local (SSRF protection exempts only these).
    #[serde(default)]
    pub allow_cidrs: Vec<Cidr>,
    /// Raw socket addresses the tool may use.
    #[serde(default)]
    pub sockets: Vec<SocketGrant>,
    /// Host directories the tool may see.
    #[serde(default)]
    pub files: Vec<FileGrant>,
    /// Environment variables: a literal value, or `{{secret:NAME}}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the tool may resolve names (`wasi:sockets/ip-name-lookup`).
    #[serde(default)]
    pub dns: bool,
    /// Cache successful results of this function for a while.
    #[serde(default)]
    pub cache: Option<CacheSettings>,
}

/// Result caching for a function: same tool version, same arguments, same
/// tenant → the stored result, without running the tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// How long a result stays fresh, e.g. `10m`.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// What a hit charges against the budget (default nothing).
    #[serde(default, deserialize_with = "usd")]
    pub hit_cost_usd: f64,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration_opt(d)?.ok_or_else(|| serde::de::Error::custom("a duration is required, e.g. 10m"))
}

/// Per-invocation limits for one tool (override the host's defaults).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolLimits {
    pub fuel: Option<u64>,
    #[serde(default, deserialize_with = "bytes_opt")]
    pub memory: Option<u64>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub timeout: Option<Duration>,
    /// Outbound calls (HTTP requests and socket connections) per invocation.
    pub max_outbound_calls: Option<u32>,
    #[serde(default, deserialize_with = "bytes_opt")]
    pub max_output: Option<u64>,
}

/// Prices in USD, for the cost budget.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default, deserialize_with = "usd")]
    pub per_call_usd: f64,
    #[serde(default, deserialize_with = "usd")]
    pub per_million_fuel_usd: f64,
    #[serde(default, deserialize_with = "usd")]
    pub per_outbound_call_usd: f64,
}

/// One allowed outbound HTTP destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `scheme://host[:port]`; `*.` subdomain wildcards, port ranges
    /// (`8000-8100`) and `*` are accepted.
    pub url: HostPattern,
    /// Allowed methods; absent means any.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Headers set on every request to this destination. Values may name
    /// secrets, `Bearer {{secret:NAME}}`, injected at the host boundary.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Secrets the tool itself may refer to by name in its request headers
    /// to this destination (`{{secret:NAME}}` in a header value); the host
    /// substitutes the value on the way out, so it never enters the guest.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default, deserialize_with = "bytes_opt")]
    pub max_response_bytes: Option<u64>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub timeout: Option<Duration>,
}

/// A preopened directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub mode: FileMode,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    #[default]
    Ro,
    Rw,
}

/// A CIDR block, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(Cidr)
            .map_err(|_| {
                serde::de::Error::custom(format!("`{s}` is not a CIDR block (e.g. 10.0.0.0/8)"))
            })
    }
}

fn usd_value(v: f64) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a non-negative amount of USD"))
    }
}

fn usd<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    usd_value(f64::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn usd_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Option::<f64>::deserialize(d)?
        .map(usd_value)
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// A size as a number of bytes or a string with a unit (`64MiB`).
fn bytes_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::N(n)) => Ok(Some(n)),
        Some(Size::S(s)) => parse_bytes(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A duration as milliseconds or a string with a unit (`2s`).
fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Dur {
        N(u64),
        S(String),
    }
    match Option::<Dur>::deserialize(d)? {
        None => Ok(None),
        Some(Dur::N(ms)) => Ok(Some(Duration::from_millis(ms))),
        Some(Dur::S(s)) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}
