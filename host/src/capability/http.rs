//! Outbound HTTP (`wasi:http/outgoing-handler`), mediated in wasmtime's one
//! embedder hook, [`WasiHttpHooks::send_request`].
//!
//! Every request the guest sends is described as an [`OutboundCall::Http`]
//! and put to the gate before any byte leaves the host. A denied request
//! fails in the guest with `HTTP-request-denied`, an error it can handle.

use super::Mediator;
use crate::gate::OutboundCall;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
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
        host: uri.host().unwrap_or_default().to_ascii_lowercase(),
        port,
        scheme,
        path: uri.path().to_string(),
    }
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let verdict = self.mediator.check(describe(&request));
        if !verdict.allowed {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        // Bound every phase of the call by what is left of the invocation.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let cap = |t: Option<std::time::Duration>| Some(t.map_or(left, |t| t.min(left)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}
