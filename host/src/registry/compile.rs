//! Compiling components to native code, bounded.
//!
//! Cranelift's time and memory grow with what a component contains, and an
//! uploaded component is hostile (a crafted 6 MB module once took 20 s and
//! 2 GB inside the server). [`Compiler::Subprocess`], what `host serve` and
//! `host register` use, compiles in a child process, the `host` binary
//! re-executed as `host __compile`:
//!
//! * its address space is capped (`RLIMIT_AS`, the memory limit) and so is
//!   its CPU time (`RLIMIT_CPU`: the time limit × the cores it may use);
//! * a wall-clock deadline kills it; so does its parent's death;
//! * it runs at a lower priority (nice 10), so invocations come first;
//! * it gets no environment (no `TOOLHOST_SECRET_*`), no core dumps;
//! * at most `jobs` compiles run at once; others wait for a turn.
//!
//! Protocol: the component's bytes on stdin; the artifact on stdout and exit
//! 0, or wasmtime's refusal on stderr and exit [`EXIT_REFUSED`]. Anything
//! else is a crash, reported with the child's last stderr line. Every
//! failure is `invalid_component` naming the limit that stopped it.
//!
//! [`Compiler::InProcess`] compiles in this process, unbounded: for trusted
//! input (tests, library users who compile their own components).

use crate::error::{Error, Result};
use crate::runtime::{self, Runtime, RuntimeConfig};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The hidden `host` subcommand the compile child runs.
pub const CHILD_COMMAND: &str = "__compile";

/// The child's exit code when wasmtime refuses the component.
pub const EXIT_REFUSED: i32 = 3;

/// How much of the child's stderr is kept for error messages.
const STDERR_CAP: usize = 16 << 10;

/// Bounds on one compilation in the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall-clock time for one compile (CPU time: this × the cores).
    pub timeout: Duration,
    /// Address space of the compile child, in bytes.
    pub memory: u64,
    /// Compiles at once; more wait their turn.
    pub jobs: usize,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            timeout: Duration::from_secs(30),
            memory: 2 << 30,
            jobs: 2,
        }
    }
}

/// How components are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In this process, without bounds: for trusted input only.
    InProcess,
    /// In a child process (`exe __compile`), under `limits`.
    Subprocess { exe: PathBuf, limits: CompileLimits },
}

impl Compiler {
    /// The running executable as the compile child: for the `host` binary,
    /// whose command line has the child subcommand. On Linux, the very
    /// binary this process runs (`/proc/self/exe`), even if its file was
    /// replaced since (an upgrade in place): its artifacts are for this
    /// engine.
    pub fn subprocess(limits: CompileLimits) -> Result<Compiler> {
        let exe = if cfg!(target_os = "linux") {
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()
                .map_err(|e| Error::internal(format!("finding the host executable: {e}")))?
        };
        Ok(Compiler::Subprocess { exe, limits })
    }

    fn jobs(&self) -> usize {
        match self {
            Compiler::InProcess => 2,
            Compiler::Subprocess { limits, .. } => limits.jobs.max(1),
        }
    }
}

/// A compiler and its turns: at most [`CompileLimits::jobs`] at once.
pub(crate) struct Compiles {
    compiler: Compiler,
    turns: tokio::sync::Semaphore,
}

impl Compiles {
    pub(crate) fn new(compiler: Compiler) -> Compiles {
        Compiles {
            turns: tokio::sync::Semaphore::new(compiler.jobs()),
            compiler,
        }
    }

    /// Compile `bytes` to an artifact `runtime` loads. Dropping the future
    /// kills the child.
    pub(crate) async fn compile(
        &self,
        runtime: &Arc<Runtime>,
        bytes: Arc<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let _turn = self
            .turns
            .acquire()
            .await
            .map_err(|_| Error::internal("the compiler is closed"))?;
        let started = std::time::Instant::now();
        let compiled = match &self.compiler {
            Compiler::InProcess => {
                let runtime = runtime.clone();
                tokio::task::spawn_blocking(move || runtime.precompile(&bytes))
                    .await
                    .map_err(|e| Error::internal(format!("compiler task: {e}")))?
            }
            Compiler::Subprocess { exe, limits } => {
                in_child(exe, limits, runtime.config(), bytes).await
            }
        };
        crate::observe::metrics::compiled(started.elapsed(), compiled.is_ok());
        compiled
    }
}

/// The compile child's body (`host __compile`): component on stdin,
/// artifact on stdout. Returns the exit code.
pub fn child_main(config: &RuntimeConfig) -> i32 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("reading the component: {e}");
        return 1;
    }
    let engine = match runtime::compiler_engine(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{}", e.message);
            return 1;
        }
    };
    match runtime::precompile(&engine, &bytes) {
        Ok(artifact) => {
            drop(bytes);
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&artifact).and_then(|()| out.flush()) {
                eprintln!("writing the artifact: {e}");
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("{}", e.message);
            EXIT_REFUSED
        }
    }
}

/// The compile child's CPU-time limit: the wall-clock limit on every core
/// it may use (the compiler is parallel), rounded up.
fn cpu_seconds(timeout: Duration) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (timeout.as_secs_f64() * cores).ceil() as u64 + 1
}

async fn in_child(
    exe: &std::path::Path,
    limits: &CompileLimits,
    config: &RuntimeConfig,
    bytes: Arc<Vec<u8>>,
) -> Result<Vec<u8>> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(CHILD_COMMAND)
        .arg("--max-wasm-stack")
        .arg(config.max_wasm_stack.to_string())
        .env_clear()
        // Allocators reserve address space in large steps (mimalloc: 1 GiB
        // arenas, glibc: 64 MiB per thread), which the address-space limit
        // counts: smaller steps make the limit track what is used.
        .env("MIMALLOC_ARENA_RESERVE", "64MiB")
        .env("MALLOC_ARENA_MAX", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    confine(&mut cmd, limits.memory, cpu_seconds(limits.timeout));
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::internal(format!("starting the compiler ({}): {e}", exe.display())))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Error::internal("the compiler's pipes are missing"));
    };
    // A child that dies early closes its stdin: the write fails, and the
    // exit status says why.
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&bytes).await;
    });
    let cap = usize::try_from(limits.memory).unwrap_or(usize::MAX);
    let run = async {
        let (out, err) = tokio::join!(drain(&mut stdout, cap), drain(&mut stderr, STDERR_CAP));
        (out, err, child.wait().await)
    };
    let finished = tokio::time::timeout(limits.timeout, run).await;
    feed.abort();
    let Ok(((artifact, too_big), (stderr, _), status)) = finished else {
        let _ = child.kill().await;
        return Err(Error::invalid_component(format!(
            "compiling took longer than the {} limit",
            secs(limits.timeout)
        )));
    };
    let status = status.map_err(|e| Error::internal(format!("waiting for the compiler: {e}")))?;
    if status.success() && too_big {
        return Err(Error::invalid_component(format!(
            "the compiled artifact is larger than the {} compile memory limit",
            bytes_text(limits.memory)
        )));
    }
    if status.success() {
        return Ok(artifact);
    }
    Err(failure(status, &String::from_utf8_lossy(&stderr), limits))
}

/// Read a pipe to its end, keeping at most `cap` bytes; true if more came.
async fn drain(pipe: &mut (impl AsyncRead + Unpin), cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut over = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, over),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                over |= n > room;
            }
        }
    }
}

/// Why the child failed, as the error the uploader sees.
fn failure(status: ExitStatus, stderr: &str, limits: &CompileLimits) -> Error {
    // The last line that says something (a panic's message, not its
    // `note: run with RUST_BACKTRACE=1` footer).
    let last = stderr
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with("note:"))
        .unwrap_or("");
    // An allocation refused under the address-space limit: Rust's abort
    // message, an `ENOMEM` from a mapping, or a thread without room for its
    // stack.
    let out_of_memory = stderr.contains("memory allocation of")
        || stderr.contains("Cannot allocate memory")
        || stderr.contains("out of memory")
        || stderr.contains("Resource temporarily unavailable");
    if out_of_memory {
        return Error::invalid_component(format!(
            "compiling needed more than the {} compile memory limit",
            bytes_text(limits.memory)
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(libc::SIGXCPU) {
            return Error::invalid_component(format!(
                "compiling used more CPU time than the {} limit allows",
                secs(limits.timeout)
            ));
        }
    }
    if status.code() == Some(EXIT_REFUSED) {
        return Error::invalid_component(last.to_string());
    }
    let how = match status.code() {
        Some(code) => format!("exit code {code}"),
        None => status.to_string(),
    };
    Error::invalid_component(format!(
        "the compiler failed on this component ({how}){}",
        if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        }
    ))
}

/// Apply the child's limits between fork and exec.
#[cfg(unix)]
fn confine(cmd: &mut tokio::process::Command, memory: u64, cpu_seconds: u64) {
    #[cfg(target_os = "linux")]
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setrlimit, setpriority, prctl,
    // getppid) on values captured by copy.
    unsafe {
        cmd.pre_exec(move || {
            let limit = |resource, soft: u64, hard: u64| {
                let l = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(resource, &l) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            limit(libc::RLIMIT_AS, memory, memory)?;
            limit(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
            limit(libc::RLIMIT_CORE, 0, 0)?;
            // Best effort: a lower priority only matters under contention.
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the line above.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the parent exited"));
                }
            }
            Ok(())
        });
    }
}

#[cfg(not(unix))]
fn confine(_cmd: &mut tokio::process::Command, _memory: u64, _cpu_seconds: u64) {}

/// `30 s`, `0.5 s`.
pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// `2 GiB`, `512 MiB`, `64 KiB`, `100 bytes`.
pub(crate) fn bytes_text(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    if n >= 1 << 20 {
        return format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64);
    }
    format!("{n} bytes")
}
