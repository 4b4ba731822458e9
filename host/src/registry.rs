//! The tool registry: tools registered once, versioned, loaded without
//! recompiling.
//!
//! * Registration validates the component fully before anything is stored:
//!   a cheap structural check ([`check`]), then it must load (a component,
//!   only imports the host provides, only supported types) and compile under
//!   the compiler's bounds ([`compile`]). Then it stores the bytes
//!   content-addressed (SHA-256) and an immutable version record, and keeps
//!   the compiled artifact in this node's artifact cache ([`artifacts`]).
//! * A name points at one version; re-pointing it is deploy or rollback. A
//!   name can be disabled.
//! * Loading checks the stored bytes against their digest, then uses this
//!   node's artifact for them when it has one, else compiles them (bounded,
//!   like an upload) and keeps the artifact. Artifacts are native code:
//!   none is ever read from storage, so whoever can write the database
//!   cannot make the host run code of their choosing.
//! * Names are per tenant and satisfy LLM tool-name rules.

pub mod artifacts;
pub mod check;
pub mod compile;

pub use artifacts::ArtifactCache;
pub use check::StructureLimits;
pub use compile::{CompileLimits, Compiler};

use crate::audit::canonical::sha256_hex;
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::TenantId;
use crate::runtime::Runtime;
use crate::storage::{Registered, Storage, ToolEntry, ToolVersion};
use crate::tool::docs::WitSource;
use crate::tool::{LoadOptions, Tool};
use compile::Compiles;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a registry compiles components and where it keeps their artifacts.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// In process (the default: trusted input only) or in a bounded child.
    pub compiler: Compiler,
    /// This node's artifact cache directory (`<data dir>/artifacts`). None:
    /// nothing is kept, every load compiles.
    pub artifact_dir: Option<PathBuf>,
    /// The artifact cache's size bound, in bytes.
    pub artifact_cache_bytes: u64,
    /// What an uploaded component may contain.
    pub structure: StructureLimits,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            compiler: Compiler::InProcess,
            artifact_dir: None,
            artifact_cache_bytes: 4 << 30,
            structure: StructureLimits::default(),
        }
    }
}

/// The registry over a storage backend and a runtime.
#[derive(Clone)]
pub struct Registry {
    storage: Arc<dyn Storage>,
    runtime: Arc<Runtime>,
    compiles: Arc<Compiles>,
    artifacts: Option<Arc<ArtifactCache>>,
    structure: StructureLimits,
}

/// What a registration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registration {
    pub tenant: TenantId,
    pub name: String,
    pub version: String,
    pub digest: String,
    /// False when the same bytes were already registered under this version.
    pub created: bool,
    /// Whether the name now points at this version.
    pub deployed: bool,
    pub functions: Vec<String>,
    pub compile_ms: u64,
}

/// A component to register.
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub tenant: &'a TenantId,
    pub name: &'a str,
    /// The version; default: the next number (or the existing version of
    /// the same bytes).
    pub version: Option<&'a str>,
    pub bytes: Vec<u8>,
    /// The tool's WIT source, for docs.
    pub wit: Option<&'a Path>,
    /// Point the name at this version.
    pub deploy: bool,
}

/// A loaded tool and where it came from.
pub struct Loaded {
    pub tool: Tool,
    pub entry: ToolEntry,
    pub version: ToolVersion,
    /// True when this node's artifact was used (no compilation).
    pub from_artifact: bool,
}

/// Check a tool name: 1 to 48 characters of `A-Za-z0-9_-`, starting with a
/// letter (so that `name__function` still fits LLM APIs' 64-character names).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.contains("__");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_args(format!(
            "tool name `{name}`: use 1 to 48 letters, digits, `-` or `_` (no `__`), starting with a letter"
        )))
    }
}

fn check_version(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_args(format!(
            "version `{v}`: use 1 to 64 letters, digits, `.`, `-`, `_` or `+`"
        )))
    }
}

impl Registry {
    /// A registry that compiles in process and keeps no artifacts (every
    /// load compiles): for tests and trusted input.
    pub fn new(storage: Arc<dyn Storage>, runtime: Arc<Runtime>) -> Registry {
        Registry {
            storage,
            runtime,
            compiles: Arc::new(Compiles::new(Compiler::InProcess)),
            artifacts: None,
            structure: StructureLimits::default(),
        }
    }

    /// A registry with `options` (opening the artifact cache).
    pub fn with_options(
        storage: Arc<dyn Storage>,
        runtime: Arc<Runtime>,
        options: RegistryOptions,
    ) -> Result<Registry> {
        let artifacts = match &options.artifact_dir {
            Some(dir) => Some(Arc::new(ArtifactCache::open(
                dir,
                &runtime.compatibility(),
                options.artifact_cache_bytes,
            )?)),
            None => None,
        };
        Ok(Registry {
            storage,
            runtime,
            compiles: Arc::new(Compiles::new(options.compiler)),
            artifacts,
            structure: options.structure,
        })
    }

    /// Register `bytes` as `name` (version given, or the next number).
    /// `progress` is called about twice a second while compiling, with the
    /// time spent so far.
    pub async fn register(
        &self,
        upload: Upload<'_>,
        progress: &(dyn Fn(Duration) + Sync),
    ) -> Result<Registration> {
        let Upload {
            tenant,
            name,
            version,
            bytes,
            wit,
            deploy,
        } = upload;
        validate_name(name)?;
        if let Some(v) = version {
            check_version(v)?;
        }
        // Validate everything before storing anything (off the async
        // workers: an upload may be large).
        let bytes = Arc::new(bytes);
        let (docs, catalog) = {
            let (bytes, structure) = (bytes.clone(), self.structure.clone());
            let wit = wit.map(Path::to_path_buf);
            tokio::task::spawn_blocking(move || {
                check::check(&bytes, &structure)?;
                let docs = match &wit {
                    Some(dir) => Some(WitSource::parse(dir)?.package_docs()?),
                    None => None,
                };
                let options = LoadOptions { wit, docs: None };
                let (catalog, _warnings) = Tool::reflect(&bytes, &options)?;
                Ok::<_, Error>((docs, catalog))
            })
            .await
            .map_err(|e| Error::internal(format!("validation task: {e}")))??
        };
        for f in &catalog.functions {
            let llm = crate::schema::llm_name(name, f);
            if llm.len() > 64 {
                return Err(Error::invalid_args(format!(
                    "function `{}` would be offered to LLMs as `{llm}` ({} characters; their APIs take at most 64): choose a shorter tool name",
                    f.name,
                    llm.len()
                )));
            }
        }
        let functions: Vec<String> = catalog.functions.iter().map(|f| f.signature()).collect();
        let digest = sha256_hex(&bytes);
        let version = match version {
            Some(v) => v.to_string(),
            None => {
                let versions = self.storage.tool_versions(tenant, name).await?;
                if let Some(same) = versions.iter().rev().find(|v| v.digest == digest) {
                    same.version.clone()
                } else {
                    let next = versions
                        .iter()
                        .filter_map(|v| v.version.parse::<u64>().ok())
                        .max()
                        .unwrap_or(0)
                        + 1;
                    next.to_string()
                }
            }
        };
        if let Some(existing) = self.storage.tool_version(tenant, name, &version).await?
            && existing.digest != digest
        {
            return Err(conflict(name, &version, &existing.digest));
        }
        let started = Instant::now();
        {
            // Kept in this node's artifact cache; loading finds it there.
            let compile = self.compile(&digest, bytes.clone());
            tokio::pin!(compile);
            let _compiled = loop {
                tokio::select! {
                    done = &mut compile => break done?,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => progress(started.elapsed()),
                }
            };
        }
        let compile_ms = started.elapsed().as_millis() as u64;
        self.storage.blob_put(&digest, &bytes).await?;
        let record = ToolVersion {
            tenant: tenant.clone(),
            name: name.to_string(),
            version: version.clone(),
            digest: digest.clone(),
            docs,
            // Artifacts are per node (`artifacts`), never stored.
            artifact: None,
            engine: None,
            functions: functions.clone(),
            created_ms: now_ms(),
        };
        let created = match self.storage.tool_register(record, deploy).await? {
            Registered::Created => true,
            Registered::Exists => false,
            Registered::Conflict { digest: other } => return Err(conflict(name, &version, &other)),
        };
        Ok(Registration {
            tenant: tenant.clone(),
            name: name.to_string(),
            version,
            digest,
            created,
            deployed: deploy,
            functions,
            compile_ms,
        })
    }

    /// Compile `bytes` (bounded) unless this node already has their
    /// artifact; keep the artifact. Returns it when there is no cache to
    /// keep it in.
    async fn compile(&self, digest: &str, bytes: Arc<Vec<u8>>) -> Result<Compiled> {
        if let Some(cache) = &self.artifacts {
            let (cache, key) = (cache.clone(), digest.to_string());
            if let Some(path) = blocking(move || cache.get(&key)).await? {
                return Ok(Compiled::File(path));
            }
        }
        let artifact = self.compiles.compile(&self.runtime, bytes).await?;
        let Some(cache) = &self.artifacts else {
            return Ok(Compiled::Bytes(artifact));
        };
        let (cache, key) = (cache.clone(), digest.to_string());
        let path = blocking(move || cache.put(&key, &artifact)).await?;
        Ok(Compiled::File(path))
    }

    /// Load the version a name points at.
    pub async fn load(&self, tenant: &TenantId, name: &str) -> Result<Loaded> {
        let entry = self.enabled_entry(tenant, name).await?;
        self.load_entry(entry).await
    }

    /// A name's entry, if it exists and is enabled.
    async fn enabled_entry(&self, tenant: &TenantId, name: &str) -> Result<ToolEntry> {
        let entry = self
            .storage
            .tool_get(tenant, name)
            .await?
            .ok_or_else(|| not_found(name))?;
        check_enabled(&entry)?;
        Ok(entry)
    }

    /// Load one version of an enabled tool (whichever the name points at).
    pub async fn load_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Loaded> {
        let mut entry = self.enabled_entry(tenant, name).await?;
        entry.current = version.to_string();
        self.load_entry(entry).await
    }

    /// Load the version an entry points at (whether or not it is disabled).
    pub async fn load_entry(&self, entry: ToolEntry) -> Result<Loaded> {
        let (tenant, name) = (entry.tenant.clone(), entry.name.clone());
        let (tenant, name) = (&tenant, name.as_str());
        let version = self
            .storage
            .tool_version(tenant, name, &entry.current)
            .await?
            .ok_or_else(|| {
                Error::internal(format!(
                    "tool `{name}` points at missing version {}",
                    entry.current
                ))
            })?;
        let bytes = self
            .storage
            .blob_get(&version.digest)
            .await?
            .ok_or_else(|| {
                Error::internal(format!(
                    "the bytes of {name}@{} are missing",
                    version.version
                ))
            })?;
        let bytes = Arc::new(bytes);
        let options = LoadOptions {
            wit: None,
            docs: version.docs.clone(),
        };
        // Off the async workers: hashing, reflecting and mapping a large
        // component take milliseconds.
        let (runtime, artifacts) = (self.runtime.clone(), self.artifacts.clone());
        let (key, tool_name, label) = (
            version.digest.clone(),
            name.to_string(),
            format!("{name}@{}", version.version),
        );
        let (b, o) = (bytes.clone(), options.clone());
        let cached = blocking(move || {
            if sha256_hex(&b) != key {
                return Err(Error::internal(format!(
                    "the stored bytes of {label} do not match their digest sha256:{key}"
                )));
            }
            let Some(cache) = artifacts else {
                return Ok(None);
            };
            let Some(path) = cache.get(&key)? else {
                return Ok(None);
            };
            match Tool::load_artifact_file(&runtime, &tool_name, &b, &path, &o) {
                Ok(tool) => Ok(Some(tool)),
                Err(e) => {
                    // Unreadable or for another engine: rebuild it.
                    tracing::warn!(tool = %label, "artifact dropped: {}", e.message);
                    cache.remove(&key);
                    Ok(None)
                }
            }
        })
        .await?;
        let (tool, from_artifact) = match cached {
            Some(tool) => (tool, true),
            None => {
                // Not compiled on this node yet (or for this engine):
                // compile, bounded like an upload, and keep the artifact.
                let compiled = self.compile(&version.digest, bytes.clone()).await?;
                let (runtime, tool_name) = (self.runtime.clone(), name.to_string());
                let tool = blocking(move || match compiled {
                    Compiled::File(path) => {
                        Tool::load_artifact_file(&runtime, &tool_name, &bytes, &path, &options)
                    }
                    // SAFETY: the compile child's output, just received
                    // over its pipe; nothing else wrote it.
                    Compiled::Bytes(artifact) => unsafe {
                        Tool::load_precompiled(&runtime, &tool_name, &bytes, &artifact, &options)
                    },
                })
                .await?;
                (tool, false)
            }
        };
        Ok(Loaded {
            tool: tool.with_origin(&version.version, &version.digest),
            entry,
            version,
            from_artifact,
        })
    }

    /// A tenant's tools with their current versions.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<(ToolEntry, Option<ToolVersion>)>> {
        let mut out = Vec::new();
        for entry in self.storage.tool_list(tenant).await? {
            let version = self
                .storage
                .tool_version(tenant, &entry.name, &entry.current)
                .await?;
            out.push((entry, version));
        }
        Ok(out)
    }

    /// A tool's entry and all its versions.
    pub async fn describe(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(ToolEntry, Vec<ToolVersion>)> {
        let entry = self
            .storage
            .tool_get(tenant, name)
            .await?
            .ok_or_else(|| not_found(name))?;
        let versions = self.storage.tool_versions(tenant, name).await?;
        Ok((entry, versions))
    }

    /// Point a name at an existing version (deploy or roll back).
    pub async fn deploy(&self, tenant: &TenantId, name: &str, version: &str) -> Result<()> {
        if self
            .storage
            .tool_update(tenant, name, Some(version), None)
            .await?
        {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!("tool `{name}` has no version `{version}`"),
            ))
        }
    }

    /// Disable or enable a name.
    pub async fn set_disabled(&self, tenant: &TenantId, name: &str, disabled: bool) -> Result<()> {
        if self
            .storage
            .tool_update(tenant, name, None, Some(disabled))
            .await?
        {
            Ok(())
        } else {
            Err(not_found(name))
        }
    }
}

/// A compiled component: this node's artifact file, or (without an artifact
/// cache) the artifact itself.
enum Compiled {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Run blocking work (hashing, file system, mapping) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("registry task: {e}")))?
}

/// Refuse a disabled tool.
pub fn check_enabled(entry: &ToolEntry) -> Result<()> {
    if entry.disabled {
        return Err(Error::new(
            ErrorKind::ToolDisabled,
            format!("tool `{}` is disabled", entry.name),
        ));
    }
    Ok(())
}

fn not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("no tool named `{name}` is registered"),
    )
}

fn conflict(name: &str, version: &str, digest: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "{name}@{version} is already registered with other bytes (sha256:{digest}); versions are immutable, register a new one"
        ),
    )
}
