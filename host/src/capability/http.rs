//! Outbound HTTP (`wasi:http/outgoing-handler`), mediated in wasmtime's one
//! embedder hook, [`WasiHttpHooks::send_request`].
//!
//! For every request the guest sends:
//! 1. the gate decides ([`OutboundCall::Http`]: method, scheme, host, port,
//!    path without query); a denial fails in the guest with
//!    `HTTP-request-denied`;
//! 2. the host name is resolved here, and addresses that are loopback,
//!    private, link-local (cloud metadata included), CGNAT and the like are
//!    dropped unless the grant names their CIDR; with none left the request
//!    fails with `destination-IP-prohibited`;
//! 3. the connection goes to the vetted address itself (no second lookup, so
//!    DNS rebinding cannot swap it), TLS verified against the host name;
//! 4. granted headers (secrets included) are set at this boundary — the guest
//!    never sees them;
//! 5. the call is bounded by its grant's timeout and the invocation's
//!    deadline, and the response body by its byte cap.

use super::Mediator;
use super::{HttpPermit, OutboundCall};
use crate::observe;
use crate::policy::outbound::{canonical_ip, restricted};
use crate::secrets::{Scrubber, StreamScrubber};
use bytes::Bytes;
use http_body::Frame;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The per-invocation HTTP hooks.
pub struct HttpHooks {
    mediator: Arc<Mediator>,
    /// No outbound call may outlive the invocation.
    deadline: Instant,
}

impl HttpHooks {
    pub fn new(mediator: Arc<Mediator>, deadline: Instant) -> Self {
        HttpHooks { mediator, deadline }
    }
}

/// Describe a request for the gate: scheme, host, port, path (no query).
pub fn describe(request: &http::Request<WasiBody>) -> OutboundCall {
    let uri = request.uri();
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    OutboundCall::Http {
        method: request.method().as_str().to_string(),
        host: uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
        port,
        scheme,
        path: uri.path().to_string(),
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let call = describe(&request);
        #[cfg(feature = "test-faults")]
        if let crate::capability::OutboundCall::Http { host, .. } = &call
            && host == "panic.toolhost.test"
        {
            panic!("test fault: a panic in the host's outbound call path");
        }
        let span = outbound_span(&call);
        let (verdict, index) = self.mediator.check(call);
        if span.is_on() {
            span.set(
                "toolhost.decision",
                if verdict.allowed { "allow" } else { "deny" },
            );
            span.set("toolhost.rule", verdict.rule.clone());
        }
        if !verdict.allowed {
            span.error("denied by the gate");
            span.end();
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let permit = verdict.http.unwrap_or_default();
        let mediator = self.mediator.clone();
        let deadline = self.deadline;
        Box::new(async move {
            let started = Instant::now();
            let result = send(request, options, &permit, deadline, &mediator, index, &span).await;
            let latency = started.elapsed().as_millis() as u64;
            match &result {
                Ok((response, _)) => {
                    let status = response.status().as_u16();
                    span.set("http.response.status_code", i64::from(status));
                    mediator.update(
                        index,
                        |r| {
                            r.status = Some(status);
                            r.latency_ms = Some(latency);
                        },
                        None,
                    );
                }
                Err(e) => {
                    let msg = e.to_string();
                    span.set("error.type", format!("{e:?}"));
                    span.error(msg.clone());
                    span.end();
                    mediator.update(
                        index,
                        |r| {
                            r.latency_ms = Some(latency);
                            r.error.get_or_insert(msg);
                        },
                        None,
                    );
                }
            }
            result
        })
    }
}

/// The client span of one outbound request (empty when tracing is off).
fn outbound_span(call: &OutboundCall) -> observe::trace::Span {
    use observe::trace::attr;
    if !observe::trace::enabled() {
        return observe::trace::Span::none();
    }
    let OutboundCall::Http {
        method,
        scheme,
        host,
        port,
        path,
    } = call
    else {
        return observe::trace::Span::none();
    };
    observe::trace::outbound(
        format!("{method} {host}"),
        vec![
            attr("http.request.method", method.clone()),
            attr("server.address", host.clone()),
            attr("server.port", i64::from(*port)),
            attr("url.scheme", scheme.clone()),
            attr("url.path", path.clone()),
        ],
    )
}

fn min_opt(a: Option<Duration>, b: Duration) -> Duration {
    a.map_or(b, |a| a.min(b))
}

async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    permit: &HttpPermit,
    deadline: Instant,
    mediator: &Arc<Mediator>,
    index: Option<usize>,
    span: &observe::trace::Span,
) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
    let uri = request.uri().clone();
    let tls = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let host = uri
        .host()
        .ok_or(Error::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // Every phase is bounded by the grant's timeout and by what is left of
    // the invocation.
    let left = deadline.saturating_duration_since(Instant::now());
    let budget = min_opt(permit.timeout, left);
    let call_deadline = Instant::now() + budget;
    let options = options.unwrap_or_default();
    let connect_timeout = min_opt(options.connect_timeout, budget);
    let first_byte_timeout = min_opt(options.first_byte_timeout, budget);

    // Resolve here, and vet every address.
    let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::time::timeout(
            connect_timeout,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        {
            Err(_) => return Err(Error::DnsTimeout),
            Ok(Err(e)) => {
                return Err(Error::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                });
            }
            Ok(Ok(addrs)) => addrs.collect(),
        },
    };
    let mut refused = None;
    let allowed: Vec<SocketAddr> = candidates
        .into_iter()
        .filter(|a| {
            let ip = canonical_ip(a.ip());
            match restricted(ip) {
                Some(why) if !permit.allow_cidrs.iter().any(|n| n.contains(&ip)) => {
                    refused.get_or_insert((ip, why));
                    false
                }
                _ => true,
            }
        })
        .collect();
    if allowed.is_empty() {
        let rule = match refused {
            Some((ip, why)) => format!(
                "ssrf: {host} resolves to {ip} ({why}); only an allow_cidrs grant opens such addresses"
            ),
            None => format!("ssrf: {host} resolves to no address"),
        };
        if span.is_on() {
            span.set("toolhost.decision", "deny");
            span.set("toolhost.rule", rule.clone());
        }
        let message = rule.clone();
        mediator.update(index, |r| r.error = Some(message), Some(rule));
        return Err(Error::DestinationIpProhibited);
    }

    let stream =
        match tokio::time::timeout(connect_timeout, TcpStream::connect(allowed.as_slice())).await {
            Err(_) => return Err(Error::ConnectionTimeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(Error::ConnectionRefused);
            }
            Ok(Err(e)) => return Err(Error::Connect(e)),
            Ok(Ok(s)) => s,
        };

    // The guest's headers — with the secrets it named substituted — then
    // the grant's (which win); the request goes out in origin form.
    {
        let headers = request.headers_mut();
        for value in headers.values_mut() {
            let Ok(text) = value.to_str() else { continue };
            if !text.contains("{{secret:") {
                continue;
            }
            match substitute(text, &permit.secrets) {
                Ok(v) => {
                    *value = http::HeaderValue::from_str(v.expose()).map_err(|_| {
                        Error::HttpRequestHeaderSize {
                            field_name: None,
                            field_size: None,
                        }
                    })?
                }
                Err(rule) => {
                    let message = rule.clone();
                    mediator.update(index, |r| r.error = Some(message), Some(rule));
                    return Err(Error::HttpRequestDenied);
                }
            }
        }
        for (name, value) in &permit.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::ConfigurationError)?;
            let value = http::HeaderValue::from_str(value.expose())
                .map_err(|_| Error::ConfigurationError)?;
            headers.insert(name, value);
        }
        if let Some(key) = &permit.idempotency_key
            && let Ok(v) = http::HeaderValue::from_str(key)
        {
            headers.insert("idempotency-key", v);
        }
        // With tracing on, the request carries this call's span as its
        // parent: the host's value replaces whatever the guest (or a
        // grant) set, so the downstream service joins the invocation's
        // trace, not one the guest names.
        if let Some(traceparent) = span.traceparent()
            && let Ok(v) = http::HeaderValue::from_str(&traceparent)
        {
            headers.insert("traceparent", v);
            headers.remove("tracestate");
        }
        // A request carrying secrets gets an uncompressed answer, so that an
        // echoed secret can be found in it and scrubbed.
        if !permit.injected.is_empty() {
            headers.insert(
                http::header::ACCEPT_ENCODING,
                http::HeaderValue::from_static("identity"),
            );
        }
        if !headers.contains_key(http::header::HOST) {
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
            if let Ok(v) = http::HeaderValue::from_str(authority) {
                headers.insert(http::header::HOST, v);
            }
        }
    }
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let response = if tls {
        let config = tls_config().ok_or(Error::TlsProtocolError)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(Error::InvalidDnsNameError)?;
        let tls_stream = tokio::time::timeout(
            connect_timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, stream),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Tls)?;
        exchange(tls_stream, request, connect_timeout, first_byte_timeout).await?
    } else {
        exchange(stream, request, connect_timeout, first_byte_timeout).await?
    };
    let (mut response, io) = response;
    let max = permit.max_response_bytes;
    // What the destination echoes of the secrets this request carried never
    // reaches the guest: not in a header, not in the body.
    let scrubber = Scrubber::new(&permit.injected);
    let scrub = (!scrubber.is_empty()).then(|| {
        scrub_headers(response.headers_mut(), &scrubber);
        // The body's length changes with each replacement.
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
        scrubber.stream()
    });
    let response = response.map(|incoming| {
        http_body_util::BodyExt::boxed_unsync(Capped {
            incoming,
            read: 0,
            max,
            deadline: Box::pin(tokio::time::sleep_until(call_deadline.into())),
            mediator: mediator.clone(),
            index,
            scrub_trailers: scrub.is_some().then(|| scrubber.clone()),
            scrub,
            ended: false,
            span: span.clone(),
        })
    });
    Ok((response, io))
}

/// Scrub injected values from header values, as bytes (a value that is not
/// text is searched too); a value that no longer makes a valid header after
/// scrubbing is dropped.
fn scrub_headers(headers: &mut http::HeaderMap, scrubber: &Scrubber) {
    let mut drop = Vec::new();
    for (name, value) in headers.iter_mut() {
        let mut bytes = value.as_bytes().to_vec();
        if scrubber.bytes(&mut bytes) {
            match http::HeaderValue::from_bytes(&bytes) {
                Ok(v) => *value = v,
                Err(_) => drop.push(name.clone()),
            }
        }
    }
    for name in drop {
        headers.remove(name);
    }
}

/// Substitute `{{secret:NAME}}` in a guest header value with the secrets the
/// grant lets it name; any other name denies the request.
fn substitute(
    text: &str,
    granted: &[(String, crate::secrets::Secret)],
) -> Result<crate::secrets::Secret, String> {
    struct Granted<'a>(&'a [(String, crate::secrets::Secret)]);
    impl crate::secrets::SecretSource for Granted<'_> {
        fn get(&self, name: &str) -> Option<crate::secrets::Secret> {
            self.0
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }
    }
    crate::secrets::expand(text, &Granted(granted))
        .map_err(|e| format!("secrets: {e} for this destination (not in the grant's `secrets`)"))
}

/// The TLS client configuration (webpki roots, ring), built once.
pub(crate) fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(Arc::new(config))
        })
        .clone()
}

/// Handshake, send, and wait for the response head while driving the
/// connection; the connection keeps running (as the returned future) while
/// the body streams.
async fn exchange<S>(
    stream: S,
    request: http::Request<WasiBody>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
) -> Result<(http::Response<hyper::body::Incoming>, IoFuture), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    let mut conn = Box::pin(conn);
    let send = sender.send_request(request);
    tokio::pin!(send);
    let wait = async {
        tokio::select! {
            r = &mut send => r.map_err(Error::from),
            c = &mut conn => {
                // The connection ended first: without an error, the
                // response may still be complete.
                c.map_err(Error::from)?;
                (&mut send).await.map_err(Error::from)
            }
        }
    };
    let response = tokio::time::timeout(first_byte_timeout, wait)
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let io: IoFuture = Box::new(async move { conn.await.map_err(Error::from) });
    Ok((response, io))
}

/// A response body with a byte cap and the call's deadline, which counts
/// what the guest reads into the call's record.
struct Capped {
    incoming: hyper::body::Incoming,
    read: u64,
    max: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    mediator: Arc<Mediator>,
    index: Option<usize>,
    /// Scrubs injected secrets from the body, holding back a few bytes.
    scrub: Option<StreamScrubber>,
    /// Scrubs them from trailers.
    scrub_trailers: Option<Scrubber>,
    /// Whether the held-back bytes were passed on at the end.
    ended: bool,
    /// The call's span: ends with the body, with the bytes read.
    span: observe::trace::Span,
}

impl Drop for Capped {
    fn drop(&mut self) {
        if self.span.is_on() {
            self.span.set(
                "http.response.body.size",
                i64::try_from(self.read).unwrap_or(i64::MAX),
            );
            self.span.end();
        }
    }
}

impl Capped {
    /// A data frame as the guest may see it.
    fn pass(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        let Some(scrub) = &mut self.scrub else {
            return frame;
        };
        match frame.into_data() {
            Ok(data) => Frame::data(Bytes::from(scrub.push(&data))),
            Err(frame) => match (frame.into_trailers(), &self.scrub_trailers) {
                (Ok(mut trailers), Some(s)) => {
                    scrub_headers(&mut trailers, s);
                    Frame::trailers(trailers)
                }
                (Ok(trailers), None) => Frame::trailers(trailers),
                (Err(other), _) => other,
            },
        }
    }
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    let (read, max) = (this.read, this.max);
                    this.mediator
                        .update(this.index, |r| r.response_bytes = read.min(max), None);
                    if read > max {
                        this.mediator.update(
                            this.index,
                            |r| r.error = Some(format!("response body over its {max}-byte cap")),
                            None,
                        );
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(max)))));
                    }
                }
                Poll::Ready(Some(Ok(this.pass(frame))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => match (&mut this.scrub, this.ended) {
                (Some(scrub), false) => {
                    this.ended = true;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(scrub.finish())))))
                }
                _ => Poll::Ready(None),
            },
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.mediator.update(
                        this.index,
                        |r| r.error = Some("response timed out".into()),
                        None,
                    );
                    return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream() && (self.scrub.is_none() || self.ended)
    }
}
