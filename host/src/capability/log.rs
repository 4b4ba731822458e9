//! `toolhost:tool/log`: structured log lines, kept per invocation; and
//! `toolhost:tool/progress`: progress reports, kept the same way.
//!
//! At most `max_lines` lines of at most `max_line_bytes` bytes each are kept;
//! the rest are counted as dropped. Progress reports share the cap (their
//! messages are cut like lines).

use serde::Serialize;
use wasmtime::component::{Linker, Val};

/// The interface name as imported (any 0.1.x version matches).
pub const INTERFACE: &str = "toolhost:tool/log@0.1.0";

/// The progress interface's name as imported.
pub const PROGRESS_INTERFACE: &str = "toolhost:tool/progress@0.1.0";

/// One progress report: `done` of `total` (when known).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub done: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

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
    /// Progress reports, in order.
    pub progress: Vec<Progress>,
}

impl LogBuffer {
    pub fn new(max_lines: usize, max_line_bytes: usize) -> Self {
        LogBuffer {
            max_lines,
            max_line_bytes,
            lines: Vec::new(),
            dropped: 0,
            progress: Vec::new(),
        }
    }

    fn push_progress(&mut self, done: f64, total: Option<f64>, message: Option<&str>) {
        if self.progress.len() >= self.max_lines || !done.is_finite() {
            self.dropped += 1;
            return;
        }
        let message = message.map(|m| {
            let mut cut = m.len().min(self.max_line_bytes);
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m[..cut].to_string()
        });
        self.progress.push(Progress {
            done,
            total: total.filter(|t| t.is_finite()),
            message,
        });
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

/// Define `toolhost:tool/log` and `toolhost:tool/progress` in the linker.
pub fn add_to_linker<T: HasLog + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker
        .instance(INTERFACE)?
        .func_new("emit", |mut store, _ty, params, _results| {
            if let [Val::Enum(level), Val::String(message)] = params {
                store.data_mut().log().push(level, message);
            }
            Ok(())
        })?;
    linker
        .instance(PROGRESS_INTERFACE)?
        .func_new("report", |mut store, _ty, params, _results| {
            if let [Val::Float64(done), Val::Option(total), Val::Option(message)] = params {
                let total = match total.as_deref() {
                    Some(Val::Float64(t)) => Some(*t),
                    _ => None,
                };
                let message = match message.as_deref() {
                    Some(Val::String(m)) => Some(m.as_str()),
                    _ => None,
                };
                store.data_mut().log().push_progress(*done, total, message);
            }
            Ok(())
        })
}
