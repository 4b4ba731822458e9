//! Raw sockets (`wasi:sockets`), mediated by the socket address check that
//! `wasmtime-wasi` calls before every bind, connect and datagram send.
//!
//! A denied address fails in the guest with `access-denied`.

use super::Mediator;
use super::OutboundCall;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime_wasi::sockets::SocketAddrUse;

/// The name of a socket operation, as recorded.
pub fn operation(use_: SocketAddrUse) -> &'static str {
    match use_ {
        SocketAddrUse::TcpBind => "tcp-bind",
        SocketAddrUse::TcpListen => "tcp-listen",
        SocketAddrUse::TcpAccept => "tcp-accept",
        SocketAddrUse::TcpConnect => "tcp-connect",
        SocketAddrUse::UdpBind => "udp-bind",
        SocketAddrUse::UdpSend => "udp-send",
        SocketAddrUse::UdpReceive => "udp-receive",
    }
}

/// The check closure for `WasiCtxBuilder::socket_addr_check`.
pub fn address_check(
    mediator: Arc<Mediator>,
) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |addr, use_| {
        let allowed = mediator
            .check(OutboundCall::Socket {
                addr,
                operation: operation(use_),
            })
            .0
            .allowed;
        Box::pin(async move { allowed })
    }
}
