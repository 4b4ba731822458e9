//! `toolhost:tool/log`: structured log lines, kept per invocation.
//!
//! At most `max_lines` lines of at most `max_line_bytes` bytes each are kept;
//! the rest are counted as dropped.

use serde::Serialize;
use wasmtime::component::{Linker, Val};

/// The interface name as imported (any 0.1.x version matches).
pub const INTERFACE: &str = "toolhost:tool/log@0.1.0";

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    /// Whether the message was cut at the line cap.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The bounded log of one invocation.
#[derive(Debug, Default)]
pub struct LogBuffer {
    max_lines: usize,
    max_line_bytes: usize,
    pub lines: Vec<LogLine>,
    pub dropped: u64,
}

impl LogBuffer {
    pub fn new(max_lines: usize, max_line_bytes: usize) -> Self {
        LogBuffer {
            max_lines,
            max_line_bytes,
            lines: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, level: &str, message: &str) {
        if self.lines.len() >= self.max_lines {
            self.dropped += 1;
            return;
        }
        let mut cut = message.len().min(self.max_line_bytes);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        self.lines.push(LogLine {
            level: level.to_string(),
            message: message[..cut].to_string(),
            truncated: cut < message.len(),
        });
    }
}

/// Give the store's data access to its log buffer.
pub trait HasLog {
    fn log(&mut self) -> &mut LogBuffer;
}

/// Define `toolhost:tool/log` in the linker.
pub fn add_to_linker<T: HasLog + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker
        .instance(INTERFACE)?
        .func_new("emit", |mut store, _ty, params, _results| {
            if let [Val::Enum(level), Val::String(message)] = params {
                store.data_mut().log().push(level, message);
            }
            Ok(())
        })
}
