//! The wasmtime engine, linker and epoch ticker shared by every tool.
//!
//! One [`Runtime`] per process. It compiles components ([`Runtime::load`]),
//! and its linker defines exactly the tool world's imports (`wit/world.wit`):
//! WASI 0.2 (cli, clocks, filesystem, io, random, sockets), `wasi:http`
//! outgoing-handler and `toolhost:tool/log`. [`compiler_engine`] builds an
//! engine with the same compilation settings (hence the same
//! [`Runtime::compatibility`]) but no instance pool, for the compile child
//! (`registry::compile`): its artifacts load in the runtime.

use crate::capability::log;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::sandbox::SandboxState;
use crate::tool::{LoadOptions, Tool};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Engine-wide settings. Per-invocation limits are in [`Limits`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How many instances may be live at once (pooling allocator slots).
    pub max_instances: u32,
    /// The wasm stack cap, in bytes. Engine-wide: it sizes every fiber stack.
    pub max_wasm_stack: usize,
    /// How often running guests check their deadline.
    pub epoch_tick: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 128,
            max_wasm_stack: 512 << 10,
            epoch_tick: Duration::from_millis(5),
        }
    }
}

/// The engine, the tool-world linker and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<SandboxState>,
    stop_ticker: Arc<AtomicBool>,
    config: RuntimeConfig,
}

/// The settings compiled code depends on. Shared by [`Runtime::new`] and
/// [`compiler_engine`] so that both produce and accept the same artifacts.
fn compile_settings(config: &RuntimeConfig) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .async_stack_size(config.max_wasm_stack + (1 << 20))
        // Measured: per-instance cost drops from ~40 µs to ~25 µs; tools
        // do not use component-model async.
        .concurrency_support(false);
    cfg
}

/// An engine that only compiles: the runtime's compilation settings without
/// its instance pool (which reserves far more address space than a
/// memory-limited compile child may have), linker or epoch ticker.
pub fn compiler_engine(config: &RuntimeConfig) -> Result<Engine> {
    Engine::new(&compile_settings(config))
        .map_err(|e| Error::internal(format!("creating the compiler engine: {e:#}")))
}

impl Runtime {
    pub fn new(config: &RuntimeConfig) -> Result<Runtime> {
        let mut cfg = compile_settings(config);
        let n = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(4)
            .max_tables_per_component(32)
            .max_memory_size(Limits::MAX_MEMORY as usize)
            // Reset a slot's first 2 MiB of linear memory (and its tables)
            // by zeroing instead of `madvise`: unmapping pages makes the
            // kernel flush TLBs on every core the process runs on (measured:
            // ~20% of the request threads' time at 64 concurrent calls, and
            // the copy-on-write faults after it). With `PAGEMAP_SCAN` (Linux
            // ≥ 6.7) only pages that were touched are zeroed. Kept resident:
            // at most 2 MiB per warm slot. Every invocation still starts from
            // the module's pristine memory image.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)
            .map_err(|e| Error::internal(format!("creating the engine: {e:#}")))?;

        let mut linker = Linker::new(&engine);
        let wire = |r: wasmtime::Result<()>, what: &str| {
            r.map_err(|e| Error::internal(format!("linking {what}: {e:#}")))
        };
        wire(wasmtime_wasi::p2::add_to_linker_async(&mut linker), "WASI")?;
        wire(
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker),
            "wasi:http",
        )?;
        wire(log::add_to_linker(&mut linker), "toolhost:tool/log")?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop, tick) = (engine.clone(), stop_ticker.clone(), config.epoch_tick);
        std::thread::Builder::new()
            .name("toolhost-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| Error::internal(format!("starting the epoch ticker: {e}")))?;
        Ok(Runtime {
            engine,
            linker,
            stop_ticker,
            config: config.clone(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The settings this runtime was made with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub(crate) fn linker(&self) -> &Linker<SandboxState> {
        &self.linker
    }

    /// Validate, reflect and compile a component.
    pub fn load(&self, name: &str, bytes: &[u8], options: &LoadOptions) -> Result<Tool> {
        Tool::load(self, name, bytes, options)
    }

    /// Load a tool from an artifact of [`Runtime::precompile`] (or of the
    /// compile child) that this process made: no compiling.
    ///
    /// # Safety
    ///
    /// `artifact` is loaded as native code and run: it must be bytes this
    /// host produced (by [`Runtime::precompile`] or its compile child) and
    /// nobody else could have written since, never bytes read from storage
    /// another party can write (the database). wasmtime refuses an artifact
    /// of another engine configuration, but not a malicious one.
    pub unsafe fn load_precompiled(
        &self,
        name: &str,
        bytes: &[u8],
        artifact: &[u8],
        options: &LoadOptions,
    ) -> Result<Tool> {
        // SAFETY: the caller's obligation, stated above, is this one's.
        unsafe { Tool::load_precompiled(self, name, bytes, artifact, options) }
    }

    /// Compile a component, in this process and without bounds, to an
    /// artifact this engine (and any engine with the same
    /// [`Runtime::compatibility`]) can load without compiling. Uploads are
    /// compiled by `registry::compile` instead.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        precompile(&self.engine, bytes)
    }

    /// A fingerprint of the engine settings artifacts depend on.
    pub fn compatibility(&self) -> String {
        compatibility(&self.engine)
    }

    /// [`Runtime::load`] a component file; the tool is named after the file.
    pub fn load_file(&self, path: &Path, options: &LoadOptions) -> Result<Tool> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::invalid_component(format!("cannot read {}: {e}", path.display()))
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_else(|| "tool".into());
        self.load(&name, &bytes, options)
    }
}

/// Compile a component with `engine` to a loadable artifact.
pub fn precompile(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>> {
    engine
        .precompile_component(bytes)
        .map_err(|e| Error::invalid_component(format!("compiling the component: {e:#}")))
}

/// A fingerprint (16 hex digits) of the settings `engine`'s artifacts
/// depend on: wasmtime's version, the target, compiler flags, tunables and
/// features.
pub fn compatibility(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}
