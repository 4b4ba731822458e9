//! Bounded capture of a guest's stdout and stderr.
//!
//! The first `cap` bytes are kept; the rest are counted and dropped, and the
//! capture is marked truncated. Writes never fail, so a chatty guest is not
//! turned into a crashing one; fuel and the deadline bound how long it may
//! keep writing.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Debug, Default)]
struct Buffer {
    kept: Vec<u8>,
    total: u64,
}

/// A bounded in-memory capture; clones share one buffer.
#[derive(Debug, Clone)]
pub struct Capture {
    cap: usize,
    buf: Arc<Mutex<Buffer>>,
}

/// What a capture holds once the invocation is over.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Captured {
    /// The kept bytes, as UTF-8 (lossy).
    pub text: String,
    /// Whether bytes were dropped.
    pub truncated: bool,
    /// Bytes the guest wrote in all.
    pub total_bytes: u64,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Capture {
            cap,
            buf: Arc::new(Mutex::new(Buffer::default())),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.total += bytes.len() as u64;
        let room = self.cap.saturating_sub(b.kept.len());
        let n = room.min(bytes.len());
        b.kept.extend_from_slice(&bytes[..n]);
    }

    /// Take what was captured so far.
    pub fn finish(&self) -> Captured {
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        Captured {
            text: String::from_utf8_lossy(&b.kept).into_owned(),
            truncated: b.total > b.kept.len() as u64,
            total_bytes: b.total,
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Largest write the guest is invited to make at once.
const WRITE_PERMIT: usize = 64 << 10;

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
