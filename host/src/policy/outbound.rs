//! Outbound destinations a policy can grant, and the addresses no grant of a
//! host name ever reaches.
//!
//! A [`HostPattern`] follows Spin's `allowed_outbound_hosts`:
//! `scheme://host[:port]`, where scheme may be `*`, host may be `*` or start
//! with `*.` (any subdomain, not the apex), and port may be a number, a range
//! `8000-8100` or `*`. Without a port, the scheme's default port is meant.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortMatch {
    Default,
    Any,
    Range(u16, u16),
}

/// An allowed outbound destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    source: String,
    scheme: Option<String>,
    host: HostMatch,
    port: PortMatch,
}

impl HostPattern {
    /// Whether `scheme://host:port` is covered.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if let Some(s) = &self.scheme
            && !s.eq_ignore_ascii_case(scheme)
        {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Subdomains(suffix) => {
                host.ends_with(suffix.as_str()) && host.len() > suffix.len()
            }
        };
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::Range(lo, hi) => (lo..=hi).contains(&port),
            PortMatch::Default => Some(port) == default_port(scheme),
        };
        host_ok && port_ok
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern names `host` itself (not by a wildcard).
    pub fn names_exactly(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        matches!(&self.host, HostMatch::Exact(h) if h.eq_ignore_ascii_case(host))
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "`{s}` is not a destination ({why}); expected scheme://host[:port], e.g. https://api.example.com or https://*.example.com:8000-8100"
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme {
            "*" => None,
            s if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-') =>
            {
                Some(s.to_ascii_lowercase())
            }
            _ => return Err(bad("invalid scheme")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(bad("a destination has no path, query or user"));
        }
        // Split host and port, minding IPv6 literals in brackets.
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let (h, tail) = after.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_string(), tail.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(bad("bad wildcard"));
            }
            HostMatch::Subdomains(format!(".{suffix}"))
        } else if host.is_empty() || host.contains('*') {
            return Err(bad("a wildcard may only be `*` or a leading `*.`"));
        } else {
            HostMatch::Exact(host)
        };
        let port = match port {
            None => {
                if scheme.as_deref().and_then(default_port).is_none() {
                    return Err(bad("give a port: this scheme has no default"));
                }
                PortMatch::Default
            }
            Some("*") => PortMatch::Any,
            Some(p) => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo.parse().map_err(|_| bad("bad port"))?;
                let hi: u16 = hi.parse().map_err(|_| bad("bad port"))?;
                if lo > hi {
                    return Err(bad("empty port range"));
                }
                PortMatch::Range(lo, hi)
            }
        };
        Ok(HostPattern {
            source: s.to_string(),
            scheme,
            host,
            port,
        })
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Raw socket addresses a tool may use: `10.1.2.3:5432`, `10.0.0.0/8:5432`,
/// `[fd00::/8]:*`, or `*:443` is not allowed (grant specific addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGrant {
    source: String,
    net: IpNet,
    ports: (u16, u16),
}

impl SocketGrant {
    pub fn matches(&self, addr: &SocketAddr) -> bool {
        self.net.contains(&canonical_ip(addr.ip()))
            && (self.ports.0..=self.ports.1).contains(&addr.port())
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl FromStr for SocketGrant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a socket grant; expected ADDR:PORT, CIDR:PORT or [V6-CIDR]:PORT, with PORT a number, a range or *"
            )
        };
        let (addr, port) = if let Some(after) = s.strip_prefix('[') {
            let (a, tail) = after.split_once(']').ok_or_else(bad)?;
            (a, tail.strip_prefix(':').ok_or_else(bad)?)
        } else {
            s.rsplit_once(':').ok_or_else(bad)?
        };
        let net = addr
            .parse::<IpNet>()
            .or_else(|_| addr.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| bad())?;
        let ports = match port {
            "*" => (0, u16::MAX),
            p => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo = lo.parse().map_err(|_| bad())?;
                let hi = hi.parse().map_err(|_| bad())?;
                if lo > hi {
                    return Err(bad());
                }
                (lo, hi)
            }
        };
        Ok(SocketGrant {
            source: s.to_string(),
            net,
            ports,
        })
    }
}

impl<'de> Deserialize<'de> for SocketGrant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as the IPv4
/// address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why an address is off limits unless a CIDR grant names it: loopback,
/// private, link-local (cloud metadata at 169.254.169.254 included), CGNAT,
/// unspecified, multicast, broadcast, documentation, ULA, NAT64 of those.
pub fn restricted(ip: IpAddr) -> Option<&'static str> {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("carrier-grade NAT")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast/reserved")
    } else if (o[0] == 192 && o[1] == 0 && o[2] == 0) || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("special-purpose")
    } else {
        None
    }
}

/// The IPv4 address two IPv6 segments carry (6to4, NAT64).
fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        Some("unique local")
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if seg[0] == 0x2002 {
        // 6to4: the IPv4 address is in the second and third segments.
        restricted_v4(embedded_v4(seg[1], seg[2])).map(|_| "6to4 of a restricted IPv4 address")
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo: a tunnel whose far end (an obfuscated IPv4 address) is not
        // judged here; refused as a whole.
        Some("Teredo")
    } else if seg[0] == 0x64 && seg[1] == 0xff9b {
        // NAT64: judge the embedded IPv4 address.
        restricted_v4(embedded_v4(seg[6], seg[7])).map(|_| "NAT64 of a restricted IPv4 address")
    } else if seg[0] == 0 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 && seg[4] == 0 && seg[5] == 0
    {
        // IPv4-compatible (deprecated) ::a.b.c.d
        Some("IPv4-compatible")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Some("documentation")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        s.parse().unwrap()
    }

    #[test]
    fn host_patterns() {
        assert!(p("https://api.example.com").matches("https", "api.example.com", 443));
        assert!(!p("https://api.example.com").matches("https", "api.example.com", 8443));
        assert!(!p("https://api.example.com").matches("http", "api.example.com", 80));
        assert!(!p("https://api.example.com").matches("https", "evil.api.example.com", 443));
        assert!(p("https://*.example.com").matches("https", "a.b.example.com", 443));
        assert!(!p("https://*.example.com").matches("https", "example.com", 443));
        assert!(!p("https://*.example.com").matches("https", "badexample.com", 443));
        assert!(p("http://localhost:8000-8100").matches("http", "localhost", 8050));
        assert!(!p("http://localhost:8000-8100").matches("http", "localhost", 8101));
        assert!(p("*://*:*").matches("http", "anything", 1));
        assert!(p("https://API.Example.com.").matches("https", "api.example.com.", 443));
        assert!(p("http://[::1]:8080").matches("http", "[::1]", 8080));
        for bad in [
            "api.example.com",
            "https://",
            "https://a*.b.com",
            "https://x.com/path",
            "tcp://x.com",
            "https://x.com:9-1",
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn restricted_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fd00::1",
            "fe80::1",
            "64:ff9b::7f00:1",
            "224.0.0.1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
        ] {
            assert!(restricted(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(restricted(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn socket_grants() {
        let g: SocketGrant = "10.0.0.0/8:5432".parse().unwrap();
        assert!(g.matches(&"10.9.8.7:5432".parse().unwrap()));
        assert!(!g.matches(&"10.9.8.7:5433".parse().unwrap()));
        assert!(g.matches(&"[::ffff:10.9.8.7]:5432".parse().unwrap()));
        let g: SocketGrant = "[fd00::/8]:*".parse().unwrap();
        assert!(g.matches(&"[fd12::1]:1".parse().unwrap()));
        assert!("nonsense".parse::<SocketGrant>().is_err());
    }
}
