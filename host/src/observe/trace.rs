//! OpenTelemetry traces over OTLP/HTTP (protobuf).
//!
//! One span per invocation (`invoke {tool}/{function}`, kind server), the
//! root of this host's part of the trace, parented by the caller's W3C
//! `traceparent` when the transport had one ([`crate::gate::CallContext`]'s
//! `traceparent`: the HTTP header on `/v1`, `_meta` on MCP). Its children:
//! `admit` (the policy decision and its rule, the budget reservation), `sandbox` (with one `outbound` client span per outbound
//! call: destination, decision, status, bytes), and `complete` (the durable
//! audit commit).
//!
//! The current span travels with the invocation's future
//! ([`Span::run`]), so the layers below need no handle: they call
//! [`child`] or [`current`]. Off (no endpoint), every function here returns
//! at once and spans are empty.
//!
//! Export: a batch span processor (the SDK's thread, bounded queue of
//! `OTEL_BSP_MAX_QUEUE_SIZE` spans, 2048 by default: past it spans are
//! dropped, never waited for) posting to `<endpoint>/v1/traces` through a
//! small hyper client running on the server's runtime.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

static TRACER: OnceLock<(SdkTracerProvider, SdkTracer)> = OnceLock::new();

fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get().map(|(_, t)| t)
}

/// Whether traces are exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Where and how to export.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The collector's base URL (`http://collector:4318`): spans go to
    /// `<endpoint>/v1/traces`. `None`: the `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// / `OTEL_EXPORTER_OTLP_ENDPOINT` variables decide.
    pub endpoint: Option<String>,
}

/// Whether the environment asks for traces without a flag: an OTLP
/// endpoint variable is set, the SDK is not disabled and the traces
/// exporter is not `none`.
pub fn wanted_by_env() -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|s| !s.trim().is_empty());
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && !disabled_by_env()
}

/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
pub fn disabled_by_env() -> bool {
    let is =
        |v: &str, want: &str| std::env::var(v).is_ok_and(|s| s.trim().eq_ignore_ascii_case(want));
    is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none")
}

/// Turn on trace export for this process (from within a Tokio runtime: the
/// exporter's requests run on it). Standard variables are honoured:
/// `OTEL_EXPORTER_OTLP_{TRACES_,}{ENDPOINT,HEADERS,TIMEOUT}`,
/// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
/// (+`_ARG`), `OTEL_BSP_*`. Returns the endpoint in use.
pub fn install(config: &Config) -> Result<String, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    if TRACER.get().is_some() {
        return Err("tracing is already on".into());
    }
    let endpoint = match &config.endpoint {
        Some(base) => {
            let base = base.trim_end_matches('/');
            let url: http::Uri = base
                .parse()
                .map_err(|e| format!("--otlp-endpoint {base:?}: {e}"))?;
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                return Err(format!(
                    "--otlp-endpoint {base:?}: an http:// or https:// URL of the collector"
                ));
            }
            Some(format!("{base}/v1/traces"))
        }
        None => None,
    };
    let timeout = std::env::var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let client = client::Client::new(
        tokio::runtime::Handle::try_current()
            .map_err(|_| "tracing needs a Tokio runtime".to_string())?,
        timeout,
    );
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client);
    if let Some(url) = &endpoint {
        builder = builder.with_endpoint(url.clone());
    }
    let exporter = builder
        .build()
        .map_err(|e| format!("the OTLP exporter: {e}"))?;
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|s| s.contains("service.name="));
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !named {
        resource = resource.with_service_name("toolhost");
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("toolhost");
    TRACER
        .set((provider, tracer))
        .map_err(|_| "tracing is already on".to_string())?;
    Ok(endpoint.unwrap_or_else(|| "from OTEL_EXPORTER_OTLP_* variables".into()))
}

/// Export what is buffered and stop (at shutdown). Blocking: call off the
/// async workers.
pub fn shutdown() {
    if let Some((provider, _)) = TRACER.get() {
        if let Err(e) = provider.force_flush() {
            tracing::warn!("flushing traces: {e}");
        }
        let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// The span context a W3C `traceparent` value carries, if it is valid:
/// `{version}-{trace-id}-{parent-id}-{flags}`, lowercase hex, version not
/// `ff`, ids not all zero; version `00` has exactly four fields (a later
/// version may add fields after a `-`). Anything else is `None`: the
/// invocation starts a new trace (W3C: an invalid header is ignored).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let v = value.trim();
    if !v.is_ascii() || v.len() < 55 {
        return None;
    }
    let (version, rest) = v.split_at(2);
    if !hex(version, 2) || version == "ff" {
        return None;
    }
    let rest = rest.strip_prefix('-')?;
    let (fields, extra) = rest.split_at(52);
    if version == "00" && !extra.is_empty() {
        return None;
    }
    if !extra.is_empty() && !extra.starts_with('-') {
        return None;
    }
    let mut parts = fields.split('-');
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    ))
}

/// Whether `value` is a valid `traceparent` (transports check it before
/// putting it in a `CallContext`).
pub fn valid_traceparent(value: &str) -> bool {
    parse_traceparent(value).is_some()
}

/// The trace id (32 hex digits) of a valid `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent).map(|c| format!("{:032x}", c.trace_id()))
}

/// A span being recorded; empty when tracing is off (every method then
/// does nothing).
#[derive(Clone, Default)]
pub struct Span {
    cx: Option<Context>,
}

impl Span {
    /// A span that records nothing.
    pub fn none() -> Span {
        Span { cx: None }
    }

    /// Whether this span records (tracing is on and it has a parent or is
    /// a root): callers skip building attributes otherwise.
    pub fn is_on(&self) -> bool {
        self.cx.is_some()
    }

    /// Set an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Set several attributes at once (one lock of the span, not one per
    /// attribute).
    pub fn set_all(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attributes(attributes);
        }
    }

    /// Mark the span failed, with a short description.
    pub fn error(&self, description: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.cx {
            cx.span().set_status(Status::error(description));
        }
    }

    /// Rename the span (once what it did is known).
    pub fn rename(&self, name: String) {
        if let Some(cx) = &self.cx {
            cx.span().update_name(name);
        }
    }

    /// End the span now (it also ends when its last clone is dropped).
    pub fn end(&self) {
        if let Some(cx) = &self.cx {
            cx.span().end();
        }
    }

    /// Its trace id, 32 hex digits.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.cx.as_ref()?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| format!("{:032x}", sc.trace_id()))
    }

    /// The `traceparent` naming this span as the parent (for a request
    /// this span makes).
    pub fn traceparent(&self) -> Option<String> {
        let cx = self.cx.as_ref()?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| {
            format!(
                "00-{:032x}-{:016x}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    /// `fut`, run with this span as the current one (children started
    /// inside it are its children); `fut` itself when the span records
    /// nothing. Not an `async fn`: the caller awaits `fut` in place, so a
    /// large invocation future is not copied into another state machine.
    pub fn run<F: Future>(
        &self,
        fut: F,
    ) -> tokio_util::either::Either<F, opentelemetry::context::WithContext<F>> {
        use opentelemetry::context::FutureExt;
        use tokio_util::either::Either;
        match &self.cx {
            Some(cx) => Either::Right(fut.with_context(cx.clone())),
            None => Either::Left(fut),
        }
    }
}

/// The span an invocation runs in: a root span of this host (kind server),
/// child of the caller's `traceparent` if it is valid.
pub fn invocation(
    tool: &str,
    function: &str,
    traceparent: Option<&str>,
    attributes: Vec<KeyValue>,
) -> Span {
    let Some(tracer) = tracer() else {
        return Span::none();
    };
    let parent = match traceparent.and_then(parse_traceparent) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    };
    let span = tracer
        .span_builder(format!("invoke {tool}/{function}"))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Span {
        cx: Some(parent.with_span(span)),
    }
}

/// A child of the current span (none if there is no current span).
pub fn child(name: &'static str) -> Span {
    start(name, SpanKind::Internal, Vec::new())
}

/// The current span (empty if none).
pub fn current() -> Span {
    if tracer().is_none() {
        return Span::none();
    }
    let cx = Context::current();
    if cx.has_active_span() {
        Span { cx: Some(cx) }
    } else {
        Span::none()
    }
}

/// A client span for one outbound call, child of the current span.
pub fn outbound(name: String, attributes: Vec<KeyValue>) -> Span {
    start(name, SpanKind::Client, attributes)
}

fn start(name: impl Into<Cow<'static, str>>, kind: SpanKind, attributes: Vec<KeyValue>) -> Span {
    let Some(tracer) = tracer() else {
        return Span::none();
    };
    let parent = Context::current();
    if !parent.has_active_span() {
        return Span::none();
    }
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Span {
        cx: Some(parent.with_span(span)),
    }
}

/// Attribute constructors, so callers need not name OpenTelemetry types.
pub fn attr(key: &'static str, value: impl Into<Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// The exporter's HTTP client: hyper HTTP/1.1 over the server's Tokio
/// runtime (the batch processor's thread only waits for it), TLS with the
/// webpki roots for `https://` endpoints; capped answer, deadline. One
/// connection is kept open between exports (the batch processor exports one
/// batch at a time) and opened again when the collector closed it.
mod client {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, Limited};
    use opentelemetry_http::{HttpClient, HttpError, Request, Response};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::net::TcpStream;

    type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

    /// The open connection, the `scheme://authority` it is to, and when it
    /// was last used.
    type Idle = Arc<Mutex<Option<(String, Sender, std::time::Instant)>>>;

    /// A kept connection idle longer than this is not reused: a proxy or
    /// load balancer may have dropped it without closing it, and an export
    /// sent on it would wait out its deadline.
    pub(super) const MAX_IDLE: Duration = if cfg!(test) {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(15)
    };

    #[derive(Debug)]
    pub struct Client {
        pub runtime: tokio::runtime::Handle,
        pub timeout: Duration,
        pub idle: Idle,
    }

    impl Client {
        pub fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Client {
            Client {
                runtime,
                timeout,
                idle: Idle::default(),
            }
        }
    }

    /// The largest answer read from a collector.
    const MAX_ANSWER: usize = 1 << 20;

    #[async_trait::async_trait]
    impl HttpClient for Client {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let timeout = self.timeout;
            let idle = self.idle.clone();
            let sent = self
                .runtime
                .spawn(async move {
                    match tokio::time::timeout(timeout, send(request, &idle)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {timeout:?}").into()),
                    }
                })
                .await;
            match sent {
                Ok(r) => r,
                Err(e) => Err(format!("the export task failed: {e}").into()),
            }
        }
    }

    fn tls() -> Result<Arc<rustls::ClientConfig>, HttpError> {
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
            .ok_or_else(|| "no TLS configuration".into())
    }

    /// Where a request goes: host, port, TLS or not, `scheme://authority`.
    struct Target {
        host: String,
        port: u16,
        https: bool,
        key: String,
    }

    async fn send(request: Request<Bytes>, idle: &Idle) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        let uri = parts.uri.clone();
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or("the endpoint has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let target = Target {
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            key: format!("{}://{authority}", if https { "https" } else { "http" }),
            host,
            https,
        };
        parts.uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("{e}"))?;
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&authority).map_err(|e| format!("{e}"))?,
        );
        let rebuild = || {
            let mut r = Request::new(Full::new(body.clone()));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.headers_mut() = parts.headers.clone();
            r
        };
        // The kept connection first; if the collector closed it meanwhile
        // (the request fails before any answer), once more on a new one. (A
        // collector that closed it after reading the request gets the batch
        // twice: export is at least once.)
        let kept = {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.take()
                .filter(|(key, sender, used)| {
                    *key == target.key && !sender.is_closed() && used.elapsed() < MAX_IDLE
                })
                .map(|(_, sender, _)| sender)
        };
        if let Some(mut sender) = kept
            && sender.ready().await.is_ok()
            && let Ok(response) = sender.send_request(rebuild()).await
        {
            return finish(response, sender, target.key, idle).await;
        }
        let mut sender = connect(&target).await?;
        let response = sender.send_request(rebuild()).await?;
        finish(response, sender, target.key, idle).await
    }

    async fn connect(target: &Target) -> Result<Sender, HttpError> {
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let _ = stream.set_nodelay(true);
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())?;
            let stream = tokio_rustls::TlsConnector::from(tls()?)
                .connect(name, stream)
                .await?;
            handshake(stream).await
        } else {
            handshake(stream).await
        }
    }

    async fn handshake<S>(stream: S) -> Result<Sender, HttpError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        // Runs until the connection closes: the collector closes it, or the
        // sender is dropped.
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Read the (capped) answer, then keep the connection for the next
    /// export.
    async fn finish(
        response: hyper::Response<hyper::body::Incoming>,
        sender: Sender,
        key: String,
        idle: &Idle,
    ) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the collector's answer: {e}"))?
            .to_bytes();
        *idle.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((key, sender, std::time::Instant::now()));
        Ok(Response::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn traceparent_is_parsed_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(good).unwrap();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            trace_id_of(good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may carry more fields.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra"
        ));
        for bad in [
            "",
            "garbage",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff, and 00 with extra fields
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            // short fields, wrong separators
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    /// A collector on a raw socket: answers each request `200`, keeping the
    /// connection open or closing it after each answer; counts connections.
    async fn collector(keep_alive: bool) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: headers, then content-length bytes.
                        let mut chunk = [0u8; 4096];
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + length);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() || !keep_alive {
                            return;
                        }
                    }
                });
            }
        });
        (url, connections)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_exporter_keeps_its_connection_and_opens_another_when_it_closed() {
        use opentelemetry_http::HttpClient;
        for keep_alive in [true, false] {
            let (url, connections) = collector(keep_alive).await;
            let client =
                client::Client::new(tokio::runtime::Handle::current(), Duration::from_secs(5));
            for i in 0..4 {
                let request = http::Request::post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(bytes::Bytes::from(vec![i; 100]))
                    .unwrap();
                let response = client.send_bytes(request).await.unwrap();
                assert_eq!(
                    response.status(),
                    200,
                    "keep-alive {keep_alive}, export {i}"
                );
                // Give a closing collector's FIN time to arrive, or not: both
                // ways the next export must go through.
                if i == 1 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let opened = connections.load(Ordering::SeqCst);
            if keep_alive {
                assert_eq!(opened, 1, "one connection for every export");
                // Idle past MAX_IDLE: not trusted again (a proxy may have
                // dropped it silently); the next export opens another.
                tokio::time::sleep(client::MAX_IDLE + Duration::from_millis(100)).await;
                let request = http::Request::post(url.as_str())
                    .body(bytes::Bytes::from_static(b"x"))
                    .unwrap();
                assert_eq!(client.send_bytes(request).await.unwrap().status(), 200);
                assert_eq!(connections.load(Ordering::SeqCst), 2);
            } else {
                assert_eq!(opened, 4, "a new connection after each close");
            }
        }
    }

    #[test]
    fn without_an_exporter_spans_are_empty() {
        let span = invocation(
            "t",
            "f",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            vec![],
        );
        assert!(span.trace_id().is_none());
        assert!(child("admit").traceparent().is_none());
    }
}
