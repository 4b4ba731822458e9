//! The sandbox: one invocation in a fresh `Store` and instance, under limits.
//!
//! Invariants:
//! * Every invocation gets a new [`Store`] and instance from the tool's
//!   `InstancePre`; nothing survives from one invocation to the next.
//! * Fuel, the linear-memory cap, the wall-clock deadline (epoch interruption
//!   for running code, a timer for code blocked in a host call), and the
//!   stdout/stderr/log caps are all set before the first guest instruction.
//! * The guest sees only what its [`Grants`] name; outbound calls go through
//!   the invocation's [`Mediator`].

pub mod limiter;
pub mod stdio;

use crate::capability::Grants;
use crate::capability::log::{HasLog, LogBuffer, LogLine, Progress};
use crate::capability::{Mediator, http::HttpHooks, sockets};
use crate::error::{Error, ErrorKind};
use crate::limits::Limits;
use limiter::Limiter;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stdio::{Capture, Captured};
use wasmtime::component::{ComponentExportIndex, InstancePre, ResourceTable, Val};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The data of one invocation's `Store`.
pub struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    limiter: Limiter,
    log: LogBuffer,
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for SandboxState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl HasLog for SandboxState {
    fn log(&mut self) -> &mut LogBuffer {
        &mut self.log
    }
}

/// Most random bytes one `get-random-bytes` call may ask for.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Fuel between cooperative yields (about 2 ms of guest compute here).
const FUEL_YIELD_INTERVAL: u64 = 10_000_000;

/// What one run of the sandbox produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The function's results, or why there are none.
    pub result: Result<Vec<Val>, Error>,
    pub fuel_used: u64,
    pub wall: Duration,
    pub memory_peak_bytes: u64,
    pub stdout: Captured,
    pub stderr: Captured,
    pub logs: Vec<LogLine>,
    pub logs_dropped: u64,
    /// Progress reports (`toolhost:tool/progress`), bounded like the log.
    pub progress: Vec<Progress>,
}

/// One function call to run.
pub struct Run<'a> {
    pub pre: &'a InstancePre<SandboxState>,
    pub export: &'a ComponentExportIndex,
    pub params: &'a [Val],
    pub result_count: usize,
    pub limits: &'a Limits,
    pub grants: &'a Grants,
    pub mediator: Arc<Mediator>,
}

fn wasi_ctx(run: &Run<'_>, stdout: &Capture, stderr: &Capture) -> Result<WasiCtx, Error> {
    let mut b = WasiCtxBuilder::new();
    b.stdout(stdout.clone()).stderr(stderr.clone());
    for (k, v) in &run.grants.env {
        b.env(k, v.expose());
    }
    for p in &run.grants.preopens {
        let perms = if p.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        b.preopened_dir(&p.host_path, &p.guest_path, perms)
            .map_err(|e| {
                Error::new(
                    ErrorKind::CapabilityDenied,
                    format!(
                        "granted directory {} cannot be opened: {e}",
                        p.host_path.display()
                    ),
                )
            })?;
    }
    b.allow_ip_name_lookup(run.grants.ip_name_lookup);
    // One call may ask for at most this much randomness (wasmtime's default
    // is 64 MiB, a memory lever for a hostile guest).
    b.max_random_size(MAX_RANDOM_BYTES);
    // TCP and UDP are "allowed" so that every address reaches the gate,
    // which denies by default and records each attempt.
    b.allow_tcp(true).allow_udp(true);
    b.socket_addr_check(sockets::address_check(run.mediator.clone()));
    Ok(b.build())
}

/// Run one invocation to completion, failure or deadline.
pub async fn run(engine: &Engine, run: Run<'_>) -> RunOutput {
    let started = Instant::now();
    let limits = run.limits;
    let deadline = started + limits.timeout;
    let stdout = Capture::new(limits.max_stdio_bytes);
    let stderr = Capture::new(limits.max_stdio_bytes);
    let finish = |result, fuel_used, peak, log: LogBuffer| RunOutput {
        result,
        fuel_used,
        wall: started.elapsed(),
        memory_peak_bytes: peak,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
        logs: log.lines,
        logs_dropped: log.dropped,
        progress: log.progress,
    };
    let wasi = match wasi_ctx(&run, &stdout, &stderr) {
        Ok(w) => w,
        Err(e) => return finish(Err(e), 0, 0, LogBuffer::default()),
    };
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.max_host_resources);
    let state = SandboxState {
        wasi,
        table,
        http: WasiHttpCtx::new(),
        hooks: HttpHooks::new(run.mediator.clone(), deadline),
        limiter: Limiter::new(limits.memory_bytes),
        log: LogBuffer::new(limits.max_log_lines, limits.max_log_line_bytes),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    if let Err(e) = store.set_fuel(limits.fuel.unwrap_or(u64::MAX)) {
        let log = std::mem::take(&mut store.data_mut().log);
        return finish(
            Err(Error::internal(format!("setting fuel: {e}"))),
            0,
            0,
            log,
        );
    }
    // The store may clamp "unlimited"; measure from what it actually holds.
    let fuel = store.get_fuel().unwrap_or(0);
    // Yielding every few milliseconds of compute also flushes the guest's
    // fuel counter, so fuel is reported (to within this interval) even when
    // an epoch deadline interrupts a loop that makes no calls.
    if let Err(e) = store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL)) {
        let log = std::mem::take(&mut store.data_mut().log);
        return finish(
            Err(Error::internal(format!("setting fuel yield: {e}"))),
            0,
            0,
            log,
        );
    }
    // Running code checks the clock at every epoch tick, yielding to the
    // executor in between so that a busy guest never hogs a worker thread.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });

    let call = async {
        let instance = run.pre.instantiate_async(&mut store).await?;
        let func = instance
            .get_func(&mut store, run.export)
            .ok_or_else(|| wasmtime::format_err!("export is not a function"))?;
        let mut results = vec![Val::Bool(false); run.result_count];
        func.call_async(&mut store, run.params, &mut results)
            .await?;
        Ok::<_, wasmtime::Error>(results)
    };
    // Code blocked in a host call (sleep, slow I/O) sees no epoch ticks: the
    // timer is what stops it.
    let outcome = tokio::time::timeout(limits.timeout, call).await;

    let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let peak = store.data().limiter.peak() as u64;
    let refused = store.data().limiter.refused();
    let log = std::mem::take(&mut store.data_mut().log);
    drop(store);
    let result = match outcome {
        Ok(Ok(results)) => Ok(results),
        Ok(Err(err)) => Err(classify(
            &err,
            refused,
            limits,
            &stderr.finish(),
            &run.mediator,
        )),
        Err(_elapsed) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the invocation exceeded its {} deadline while blocked in a host call",
                fmt_duration(limits.timeout)
            ),
        )),
    };
    finish(result, fuel_used, peak, log)
}

/// Put a guest failure into its stable kind, with a message naming the limit.
fn classify(
    err: &wasmtime::Error,
    refused: Option<usize>,
    limits: &Limits,
    stderr: &Captured,
    mediator: &Mediator,
) -> Error {
    let trap = err.downcast_ref::<Trap>().copied();
    let memory = || {
        Error::new(
            ErrorKind::MemoryLimit,
            format!(
                "the guest tried to grow its linear memory to {} bytes; the cap is {} bytes",
                refused.unwrap_or_default(),
                limits.memory_bytes
            ),
        )
    };
    match trap {
        Some(Trap::OutOfFuel) => Error::new(
            ErrorKind::FuelExhausted,
            format!(
                "the invocation used all of its {} fuel",
                limits.fuel.unwrap_or(u64::MAX)
            ),
        ),
        Some(Trap::Interrupt) => Error::new(
            ErrorKind::Timeout,
            format!(
                "the invocation exceeded its {} deadline",
                fmt_duration(limits.timeout)
            ),
        ),
        Some(Trap::StackOverflow) => Error::new(
            ErrorKind::StackOverflow,
            "the guest overflowed the wasm stack",
        ),
        _ if refused.is_some() => memory(),
        Some(t) => {
            let mut message = format!("the guest trapped: {t}");
            if let Some(tail) = stderr_tail(stderr) {
                message.push_str(&format!("; stderr: {tail}"));
            }
            match mediator.first_denial() {
                Some(denied) => Error::new(
                    ErrorKind::CapabilityDenied,
                    format!(
                        "{} was denied ({}), then {message}",
                        denied.call.describe(),
                        denied.rule
                    ),
                ),
                None => Error::new(ErrorKind::Trap, message),
            }
        }
        None => {
            let text = format!("{err:#}");
            if text.contains("concurrent") || text.contains("pooling") {
                Error::internal(format!("the host is at capacity: {text}"))
            } else {
                Error::new(ErrorKind::Trap, text)
            }
        }
    }
}

/// The last lines of stderr (where a Rust guest's panic message goes).
fn stderr_tail(stderr: &Captured) -> Option<String> {
    let text = stderr.text.trim_end();
    if text.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    let mut cut = tail.len().min(1024);
    while !tail.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(tail[..cut].to_string())
}

/// `2s`, `1.5s`, `250ms`.
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}
