//! The tool registry: tools registered once, versioned, loaded without
//! recompiling.
//!
//! * Registration validates the component fully (it must load: a component,
//!   only imports the host provides, only supported types) before anything
//!   is stored; then stores the bytes content-addressed (SHA-256), the
//!   precompiled artifact for this engine, and an immutable version record.
//! * A name points at one version; re-pointing it is deploy or rollback. A
//!   name can be disabled.
//! * Loading uses the precompiled artifact when it was built for an engine
//!   with this host's settings, else recompiles once and stores the new
//!   artifact.
//! * Names are per tenant and satisfy LLM tool-name rules.

use crate::audit::canonical::sha256_hex;
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::Runtime;
use crate::storage::{Registered, Storage, ToolEntry, ToolVersion};
use crate::tool::docs::WitSource;
use crate::tool::{LoadOptions, Tool};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The registry over a storage backend and a runtime.
#[derive(Clone)]
pub struct Registry {
    storage: Arc<dyn Storage>,
    runtime: Arc<Runtime>,
}

/// What a registration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registration {
    pub tenant: String,
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
    pub tenant: &'a str,
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
    /// True when the precompiled artifact was used (no compilation).
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
    pub fn new(storage: Arc<dyn Storage>, runtime: Arc<Runtime>) -> Registry {
        Registry { storage, runtime }
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
        // Validate everything before storing anything.
        let docs = match wit {
            Some(dir) => Some(WitSource::parse(dir)?.package_docs()?),
            None => None,
        };
        let options = LoadOptions {
            wit: wit.map(Path::to_path_buf),
            docs: None,
        };
        let (catalog, _warnings) = Tool::reflect(&bytes, &options)?;
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
        let runtime = self.runtime.clone();
        let compile_bytes = bytes.clone();
        let mut compile = tokio::task::spawn_blocking(move || runtime.precompile(&compile_bytes));
        let artifact = loop {
            tokio::select! {
                done = &mut compile => break done.map_err(|e| Error::internal(format!("compiler task: {e}")))??,
                _ = tokio::time::sleep(Duration::from_millis(500)) => progress(started.elapsed()),
            }
        };
        let compile_ms = started.elapsed().as_millis() as u64;
        let artifact_digest = sha256_hex(&artifact);
        self.storage.blob_put(&digest, &bytes).await?;
        self.storage.blob_put(&artifact_digest, &artifact).await?;
        let record = ToolVersion {
            tenant: tenant.to_string(),
            name: name.to_string(),
            version: version.clone(),
            digest: digest.clone(),
            docs,
            artifact: Some(artifact_digest),
            engine: Some(self.runtime.compatibility()),
            functions: functions.clone(),
            created_ms: now_ms(),
        };
        let created = match self.storage.tool_register(record, deploy).await? {
            Registered::Created => true,
            Registered::Exists => false,
            Registered::Conflict { digest: other } => return Err(conflict(name, &version, &other)),
        };
        Ok(Registration {
            tenant: tenant.to_string(),
            name: name.to_string(),
            version,
            digest,
            created,
            deployed: deploy,
            functions,
            compile_ms,
        })
    }

    /// Load the version a name points at.
    pub async fn load(&self, tenant: &str, name: &str) -> Result<Loaded> {
        let entry = self.enabled_entry(tenant, name).await?;
        self.load_entry(entry).await
    }

    /// A name's entry, if it exists and is enabled.
    async fn enabled_entry(&self, tenant: &str, name: &str) -> Result<ToolEntry> {
        let entry = self
            .storage
            .tool_get(tenant, name)
            .await?
            .ok_or_else(|| not_found(name))?;
        check_enabled(&entry)?;
        Ok(entry)
    }

    /// Load one version of an enabled tool (whichever the name points at).
    pub async fn load_version(&self, tenant: &str, name: &str, version: &str) -> Result<Loaded> {
        let mut entry = self.enabled_entry(tenant, name).await?;
        entry.current = version.to_string();
        self.load_entry(entry).await
    }

    /// Load the version an entry points at (whether or not it is disabled).
    pub async fn load_entry(&self, entry: ToolEntry) -> Result<Loaded> {
        let (tenant, name) = (entry.tenant.clone(), entry.name.clone());
        let (tenant, name) = (tenant.as_str(), name.as_str());
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
        let options = LoadOptions {
            wit: None,
            docs: version.docs.clone(),
        };
        let engine = self.runtime.compatibility();
        if let (Some(artifact), Some(built_for)) = (&version.artifact, &version.engine)
            && *built_for == engine
            && let Some(compiled) = self.storage.blob_get(artifact).await?
        {
            let tool = self
                .runtime
                .load_precompiled(name, &bytes, &compiled, &options)?
                .with_origin(&version.version, &version.digest);
            return Ok(Loaded {
                tool,
                entry,
                version,
                from_artifact: true,
            });
        }
        // Built for another engine (or missing): compile once, keep the result.
        let runtime = self.runtime.clone();
        let compile_bytes = bytes.clone();
        let artifact = tokio::task::spawn_blocking(move || runtime.precompile(&compile_bytes))
            .await
            .map_err(|e| Error::internal(format!("compiler task: {e}")))??;
        let artifact_digest = sha256_hex(&artifact);
        self.storage.blob_put(&artifact_digest, &artifact).await?;
        self.storage
            .tool_set_artifact(tenant, name, &version.version, &artifact_digest, &engine)
            .await?;
        let tool = self
            .runtime
            .load_precompiled(name, &bytes, &artifact, &options)?
            .with_origin(&version.version, &version.digest);
        Ok(Loaded {
            tool,
            entry,
            version,
            from_artifact: false,
        })
    }

    /// A tenant's tools with their current versions.
    pub async fn list(&self, tenant: &str) -> Result<Vec<(ToolEntry, Option<ToolVersion>)>> {
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
        tenant: &str,
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
    pub async fn deploy(&self, tenant: &str, name: &str, version: &str) -> Result<()> {
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
    pub async fn set_disabled(&self, tenant: &str, name: &str, disabled: bool) -> Result<()> {
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
