//! A tool: a validated, reflected, compiled and pre-instantiated component.
//!
//! Loading does all the work that does not depend on the call: check the
//! binary, decode its WIT, reject imports the host cannot provide and types it
//! cannot carry, take docs, compile, pre-instantiate, and resolve each
//! function's export index. Invoking a tool then costs one instantiation.

pub mod docs;
pub mod reflect;
pub mod ty;

pub use reflect::{Catalog, FunctionInfo, Param};
pub use ty::Ty;

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::sandbox::SandboxState;
use std::path::{Path, PathBuf};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};
use wit_parser::decoding::DecodedWasm;

/// How to load a tool.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The tool's WIT source (`--wit DIR`): docs come from it, and the
    /// component must match it.
    pub wit: Option<PathBuf>,
    /// A `package-docs` section to use instead of the component's own (the
    /// registry keeps the docs a tool was registered with this way).
    pub docs: Option<Vec<u8>>,
}

/// A loaded tool.
pub struct Tool {
    name: String,
    pre: InstancePre<SandboxState>,
    catalog: Catalog,
    /// Export index of each function, parallel to `catalog.functions`.
    exports: Vec<ComponentExportIndex>,
    warnings: Vec<String>,
    /// The registered version this was loaded from, and its digest.
    origin: Option<(String, String)>,
    /// The size of the compiled code image, in bytes.
    code_bytes: usize,
}

/// Interfaces the host provides, without version. WASI at any 0.2.x,
/// `toolhost:tool` at any 0.1.x.
const PROVIDED: &[(&str, &[&str])] = &[
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:clocks", &["monotonic-clock", "wall-clock"]),
    ("wasi:filesystem", &["types", "preopens"]),
    ("wasi:io", &["error", "poll", "streams"]),
    ("wasi:random", &["random", "insecure", "insecure-seed"]),
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "udp",
            "udp-create-socket",
            "tcp",
            "tcp-create-socket",
            "ip-name-lookup",
        ],
    ),
    ("wasi:http", &["types", "outgoing-handler"]),
    ("toolhost:tool", &["log", "content", "progress"]),
];

/// Check that the host provides every import, naming the first it does not.
pub fn check_imports(imports: &[String]) -> Result<()> {
    for import in imports {
        let (path, version) = import.split_once('@').unwrap_or((import, ""));
        let provided = path.split_once('/').is_some_and(|(package, iface)| {
            PROVIDED
                .iter()
                .any(|(p, ifaces)| *p == package && ifaces.contains(&iface))
        });
        let version_ok = if path.starts_with("toolhost:") {
            version.starts_with("0.1.")
        } else {
            version.starts_with("0.2.")
        };
        if !provided {
            return Err(Error::invalid_component(format!(
                "the component imports `{import}`, which the host does not provide (see wit/world.wit for what a tool may import)"
            )));
        }
        if !version_ok {
            return Err(Error::invalid_component(format!(
                "the component imports `{import}`; the host provides {} at version {}",
                path,
                if path.starts_with("toolhost:") {
                    "0.1.x"
                } else {
                    "0.2.x"
                }
            )));
        }
    }
    Ok(())
}

impl Tool {
    pub(crate) fn load(
        runtime: &Runtime,
        name: &str,
        bytes: &[u8],
        options: &LoadOptions,
    ) -> Result<Tool> {
        let (catalog, warnings) = Self::reflect(bytes, options)?;
        let component = Component::new(runtime.engine(), bytes)
            .map_err(|e| Error::invalid_component(format!("compiling the component: {e:#}")))?;
        Self::assemble(runtime, name, component, catalog, warnings)
    }

    /// Load from an artifact made by [`Runtime::precompile`] for this engine:
    /// no compilation.
    ///
    /// # Safety
    ///
    /// As [`Runtime::load_precompiled`]: `artifact` is native code this
    /// process produced and nobody else could have written.
    pub(crate) unsafe fn load_precompiled(
        runtime: &Runtime,
        name: &str,
        bytes: &[u8],
        artifact: &[u8],
        options: &LoadOptions,
    ) -> Result<Tool> {
        let (catalog, warnings) = Self::reflect(bytes, options)?;
        // SAFETY: this function's contract: an artifact this process just
        // compiled (in process or in its compile child), never bytes read
        // from storage; a mismatched engine is detected by wasmtime and
        // refused.
        let component = unsafe { Component::deserialize(runtime.engine(), artifact) }
            .map_err(|e| Error::internal(format!("loading the precompiled artifact: {e:#}")))?;
        Self::assemble(runtime, name, component, catalog, warnings)
    }

    /// Load from an artifact file in this node's artifact cache
    /// (`registry::artifacts`): mapped, not copied; no compilation.
    pub(crate) fn load_artifact_file(
        runtime: &Runtime,
        name: &str,
        bytes: &[u8],
        path: &Path,
        options: &LoadOptions,
    ) -> Result<Tool> {
        let (catalog, warnings) = Self::reflect(bytes, options)?;
        // SAFETY: the artifact cache holds only files this host wrote (from
        // its own compiler's output, fsynced, renamed into place, never
        // modified after) in a directory only the host's user can write; a
        // mismatched engine is detected by wasmtime and refused.
        let component =
            unsafe { Component::deserialize_file(runtime.engine(), path) }.map_err(|e| {
                Error::internal(format!(
                    "loading the precompiled artifact {}: {e:#}",
                    path.display()
                ))
            })?;
        Self::assemble(runtime, name, component, catalog, warnings)
    }

    /// Validate a component and reflect its functions, without compiling.
    pub fn reflect(bytes: &[u8], options: &LoadOptions) -> Result<(Catalog, Vec<String>)> {
        docs::check_header(bytes)?;
        let (embedded_docs, stripped) = docs::split_package_docs(bytes)?;
        let decoded = wit_parser::decoding::decode(&stripped).map_err(|e| {
            Error::invalid_component(format!("cannot decode the component's interface: {e:#}"))
        })?;
        let (mut resolve, world) = match decoded {
            DecodedWasm::Component(resolve, world) => (resolve, world),
            DecodedWasm::WitPackage(..) => {
                return Err(Error::invalid_component(
                    "this is a WIT package, not a component",
                ));
            }
        };
        let mut warnings = Vec::new();
        if let Some(data) = options.docs.clone().or(embedded_docs)
            && let Err(e) = docs::apply_package_docs(&mut resolve, world, &data)
        {
            warnings.push(format!("the package-docs section was ignored: {e}"));
        }
        let mut catalog = Catalog::from_world(&resolve, world)?;
        check_imports(&catalog.imports)?;
        if let Some(dir) = &options.wit {
            let source = docs::WitSource::parse(dir)?;
            let (_, documented) = source.world_for(&catalog)?;
            catalog.adopt_docs_from(&documented)?;
        }
        if catalog.functions.is_empty() {
            return Err(Error::invalid_component(
                "the component exports no functions",
            ));
        }
        Ok((catalog, warnings))
    }

    fn assemble(
        runtime: &Runtime,
        name: &str,
        component: Component,
        catalog: Catalog,
        warnings: Vec<String>,
    ) -> Result<Tool> {
        let pre = runtime.linker().instantiate_pre(&component).map_err(|e| {
            Error::invalid_component(format!(
                "the host cannot satisfy the component's imports: {e:#}"
            ))
        })?;
        let mut exports = Vec::with_capacity(catalog.functions.len());
        for f in &catalog.functions {
            let parent = match &f.interface {
                Some(iface) => Some(component.get_export_index(None, iface).ok_or_else(|| {
                    Error::invalid_component(format!("exported interface `{iface}` not found"))
                })?),
                None => None,
            };
            let index = component
                .get_export_index(parent.as_ref(), &f.function)
                .ok_or_else(|| {
                    Error::invalid_component(format!("export `{}` not found", f.name))
                })?;
            exports.push(index);
        }
        let image = component.image_range();
        Ok(Tool {
            code_bytes: (image.end as usize).saturating_sub(image.start as usize),
            name: name.to_string(),
            pre,
            catalog,
            exports,
            warnings,
            origin: None,
        })
    }

    /// Mark the tool as loaded from registered `version` with `digest`.
    pub fn with_origin(mut self, version: &str, digest: &str) -> Tool {
        self.origin = Some((version.to_string(), digest.to_string()));
        self
    }

    /// The registered version, if the tool came from the registry.
    pub fn version(&self) -> Option<&str> {
        self.origin.as_ref().map(|(v, _)| v.as_str())
    }

    /// The SHA-256 of the component bytes, if the tool came from the
    /// registry.
    pub fn digest(&self) -> Option<&str> {
        self.origin.as_ref().map(|(_, d)| d.as_str())
    }

    /// The size of the tool's compiled code, in bytes (what keeping it
    /// loaded costs, beyond its catalog).
    pub fn code_bytes(&self) -> usize {
        self.code_bytes
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tool's functions and imports.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Things a tool author should know that did not stop loading.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Find a function and its export index.
    pub fn function(&self, name: &str) -> Result<(&FunctionInfo, &ComponentExportIndex)> {
        let f = self.catalog.find(name)?;
        let i = self
            .catalog
            .functions
            .iter()
            .position(|g| std::ptr::eq(g, f))
            .expect("found function is in the catalog");
        Ok((f, &self.exports[i]))
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<SandboxState> {
        &self.pre
    }
}
