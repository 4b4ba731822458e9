//! Per-invocation resource limits, with defaults and parsers for the CLI's
//! human units (`64MiB`, `2s`).

use serde::Serialize;
use std::time::Duration;

/// Limits applied to one invocation. Every one of them is enforced; none is
/// advisory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// Fuel (deterministic CPU budget); `None` means unlimited, in which case
    /// only the wall-clock deadline stops a busy guest.
    pub fuel: Option<u64>,
    /// Cap on the guest's total linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline for the whole invocation, instantiation included.
    #[serde(serialize_with = "ser_ms")]
    pub timeout: Duration,
    /// Cap on the result's size, as compact JSON, in bytes.
    pub max_output_bytes: usize,
    /// Cap on captured stdout, and separately on stderr, in bytes. Output past
    /// it is dropped and the capture marked truncated.
    pub max_stdio_bytes: usize,
    /// Cap on structured log lines (`toolhost:tool/log`).
    pub max_log_lines: usize,
    /// Cap on the bytes of one log line.
    pub max_log_line_bytes: usize,
    /// Cap on host resources (streams, pollables, sockets, HTTP handles)
    /// the guest may hold at once.
    pub max_host_resources: usize,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Limits {
    /// 1 G fuel is roughly 0.2 s of straight-line guest compute here.
    pub const DEFAULT_FUEL: u64 = 1_000_000_000;
    pub const DEFAULT_MEMORY: u64 = 64 << 20;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The largest memory cap the engine's pooling allocator is sized for.
    pub const MAX_MEMORY: u64 = 4 << 30;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Some(Self::DEFAULT_FUEL),
            memory_bytes: Self::DEFAULT_MEMORY,
            timeout: Self::DEFAULT_TIMEOUT,
            max_output_bytes: 1 << 20,
            max_stdio_bytes: 64 << 10,
            max_log_lines: 1000,
            max_log_line_bytes: 4 << 10,
            max_host_resources: 10_000,
        }
    }
}

/// Parse a byte size: `65536`, `64KiB`, `64MiB`, `1GiB`, `10MB`, `512k`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 64MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use B, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parse a duration: `2s`, `500ms`, `1m`, `1.5s`, `250` (milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs = seconds(s, false)?;
    if secs > 86_400.0 {
        return Err(format!("duration `{s}` must be above zero and at most 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a retention period or TTL: like [`parse_duration`], also in days
/// (`7d`), from 1 s to 366 days (`48h` as well as `2d`).
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let secs = seconds(s, true)?;
    if secs > 366.0 * 86_400.0 {
        return Err(format!("period `{s}` must be above zero and at most 366d"));
    }
    if secs < 1.0 {
        return Err(format!("period `{s}` must be at least 1s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The seconds `s` names (`500ms`, `2s`, `5m`, `1h`, and `7d` when `days`),
/// above zero and finite; a bare number is milliseconds.
fn seconds(s: &str, days: bool) -> Result<f64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        if days {
            format!("`{s}` is not a period (try 24h or 7d)")
        } else {
            format!("`{s}` is not a duration (try 2s or 500ms)")
        }
    })?;
    let secs = match unit.trim() {
        "ms" | "" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" if days => n * 86_400.0,
        other if days => {
            return Err(format!(
                "unknown period unit `{other}` in `{s}` (use ms, s, m, h, d)"
            ));
        }
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m, h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(if days {
            format!("period `{s}` must be above zero and at most 366d")
        } else {
            format!("duration `{s}` must be above zero and at most 24h")
        });
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_period("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_period("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_period("500ms").is_err());
        assert!(parse_period("400d").is_err());
        // Hours past a day are a period too (`--approval-ttl 48h`), up to 366d.
        assert_eq!(parse_period("48h"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_period("8784h"), Ok(Duration::from_secs(366 * 86_400)));
        assert!(parse_period("8785h").is_err());
        assert_eq!(parse_period("1.5d"), Ok(Duration::from_secs(129_600)));
        assert!(parse_period("0d").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("25h").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
