//! Callbacks: the host POSTs the outcome of a decided approval to a URL the
//! orchestrator gave with the request. Only URLs the operator allows
//! (`host serve --callback-allow PATTERN`, Spin-style patterns as in policy
//! `http` grants) are accepted: checked when the request arrives and again
//! when the callback is sent. Sending takes the same precautions as a tool's
//! outbound call: the name is resolved here and loopback, private,
//! link-local and similar addresses are refused (an address the operator's
//! pattern names literally excepted), the connection goes to the vetted
//! address, TLS checks the name, the answer's body is capped and the whole
//! exchange has a deadline. Delivery is at least once, from the outbox
//! ([`crate::service::outbox`]); the outcome stays readable at
//! `GET /v1/invocations/{id}` whatever the callback's fate.

use crate::error::{Error, ErrorKind, Result};
use crate::policy::outbound::HostPattern;
use http_body_util::{BodyExt, Full};
use std::time::Duration;

/// How long one callback may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The callback URLs a server accepts.
#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    allow: Vec<HostPattern>,
}

impl Callbacks {
    /// Parse `--callback-allow` patterns (`https://hooks.example.com`,
    /// `http://127.0.0.1:8000-8100`, `https://*.example.com`).
    pub fn new(patterns: &[String]) -> Result<Callbacks> {
        let allow = patterns
            .iter()
            .map(|p| {
                p.parse::<HostPattern>()
                    .map_err(|e| Error::invalid_args(format!("--callback-allow {p}: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Callbacks { allow })
    }

    /// Accept `url` as a callback, or say why not: a malformed URL is
    /// `invalid_request` (400); a well-formed one the operator does not allow
    /// is `forbidden` (403).
    pub fn check(&self, url: &str) -> Result<()> {
        let (scheme, host, port) = parts(url)?;
        if self.allow.is_empty() {
            return Err(Error::new(
                ErrorKind::Forbidden,
                "callback_url: this server takes no callback URLs (start it with --callback-allow)",
            ));
        }
        if self.allow.iter().any(|p| p.matches(&scheme, &host, port)) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Forbidden,
                format!("callback_url {url}: not allowed by this server's --callback-allow"),
            ))
        }
    }
}

fn parts(url: &str) -> Result<(String, String, u16)> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidRequest,
            format!("callback_url {url:?}: {why}"),
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| bad("no scheme"))?
        .to_ascii_lowercase();
    let port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("use http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    Ok((scheme, host, uri.port_u16().unwrap_or(port)))
}

/// Most bytes of a callback receiver's answer that are read (the rest is
/// dropped with the connection).
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

impl Callbacks {
    /// POST `body` as JSON to `url` (checked against the allowlist again);
    /// returns the response status.
    pub async fn post(&self, url: &str, body: &serde_json::Value) -> Result<u16> {
        self.check(url)?;
        tokio::time::timeout(TIMEOUT, self.send(url, body))
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, format!("callback to {url} timed out")))?
    }

    /// The addresses `host` may be reached at: a literal one if it is not
    /// restricted, or if an allow pattern that matches this very URL
    /// (scheme, host, port) names it exactly (not one pattern matching by
    /// a wildcard and another naming the address); a name's resolved ones
    /// that are not restricted.
    async fn vetted(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<Vec<std::net::SocketAddr>> {
        use crate::policy::outbound::{canonical_ip, restricted};
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            let ip = canonical_ip(ip);
            if let Some(why) = restricted(ip)
                && !self
                    .allow
                    .iter()
                    .any(|p| p.names_exactly(bare) && p.matches(scheme, host, port))
            {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    format!(
                        "callback to {ip}: {why} addresses are refused unless --callback-allow names them"
                    ),
                ));
            }
            return Ok(vec![std::net::SocketAddr::new(ip, port)]);
        }
        let resolved = tokio::net::lookup_host((bare, port)).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("callback: resolving {bare}: {e}"),
            )
        })?;
        let mut refused = None;
        let allowed: Vec<_> = resolved
            .filter(|a| match restricted(canonical_ip(a.ip())) {
                Some(why) => {
                    refused.get_or_insert((a.ip(), why));
                    false
                }
                None => true,
            })
            .collect();
        if allowed.is_empty() {
            return Err(Error::new(
                ErrorKind::Forbidden,
                match refused {
                    Some((ip, why)) => {
                        format!("callback: {bare} resolves to {ip} ({why}); refused")
                    }
                    None => format!("callback: {bare} resolves to no address"),
                },
            ));
        }
        Ok(allowed)
    }

    async fn send(&self, url: &str, body: &serde_json::Value) -> Result<u16> {
        let (scheme, host, port) = parts(url)?;
        let failed = |e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Unavailable, format!("callback to {url}: {e}"))
        };
        let uri: http::Uri = url.parse().map_err(|e| failed(&e))?;
        let request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "toolhost-callback/1")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|e| failed(&e))?;
        let addrs = self.vetted(&scheme, &host, port).await?;
        let tcp = tokio::net::TcpStream::connect(addrs.as_slice())
            .await
            .map_err(|e| failed(&e))?;
        let status = if scheme == "https" {
            let config = crate::capability::http::tls_config().ok_or_else(|| failed(&"no TLS"))?;
            let name = rustls::pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
            .map_err(|e| failed(&e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| failed(&e))?;
            exchange(tls, request).await
        } else {
            exchange(tcp, request).await
        };
        status.map_err(|e| failed(&e))
    }
}

async fn exchange<S>(
    stream: S,
    request: http::Request<Full<bytes::Bytes>>,
) -> std::result::Result<u16, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    // Read at most MAX_ANSWER_BYTES of the answer (bounded by the deadline
    // too), then drop the connection.
    let mut body = response.into_body();
    let mut read = 0usize;
    while read < MAX_ANSWER_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    conn.abort();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_urls_are_accepted() {
        let none = Callbacks::default();
        assert!(none.check("https://hooks.example.com/x").is_err());
        let c = Callbacks::new(&[
            "https://*.example.com".into(),
            "http://127.0.0.1:8000-8100".into(),
        ])
        .unwrap();
        assert!(c.check("https://hooks.example.com/done").is_ok());
        assert!(c.check("http://127.0.0.1:8080/cb").is_ok());
        assert!(c.check("http://127.0.0.1:9000/cb").is_err());
        assert!(c.check("http://hooks.example.com/done").is_err());
        assert!(c.check("ftp://hooks.example.com").is_err());
        assert!(c.check("not a url").is_err());
        assert!(Callbacks::new(&["::bad::".into()]).is_err());
    }

    #[tokio::test]
    async fn a_restricted_address_needs_the_pattern_that_matched_to_name_it() {
        // One pattern opens a local receiver on one port; another is meant
        // for public hosts. Loopback on another port matches only the
        // wildcard, which does not name it: refused before any connection.
        let c = Callbacks::new(&[
            "http://127.0.0.1:9000".into(),
            "http://*:*".into(),
            "http://[::1]:9001".into(),
        ])
        .unwrap();
        for (scheme, host, port) in [
            ("http", "127.0.0.1", 18443),
            ("http", "[::1]", 9000),
            ("http", "169.254.169.254", 80),
        ] {
            let e = c.vetted(scheme, host, port).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Forbidden, "{host}:{port}: {}", e.message);
        }
        // The pattern naming the address, on its own port: allowed.
        let ok = c.vetted("http", "127.0.0.1", 9000).await.unwrap();
        assert_eq!(ok, vec!["127.0.0.1:9000".parse().unwrap()]);
        let ok = c.vetted("http", "[::1]", 9001).await.unwrap();
        assert_eq!(ok, vec!["[::1]:9001".parse().unwrap()]);
    }
}
