//! Where a tool's doc comments come from, and how to embed them.
//!
//! Components built by `wit-bindgen` carry no WIT doc comments. Docs are taken,
//! in order of preference, from:
//!
//! 1. the tool's WIT source, `--wit DIR` (the component is checked against it);
//! 2. a `package-docs` custom section in the component, in the format
//!    `wit-parser`'s `PackageMetadata` encodes (what Wassette's
//!    `wit-docs-inject` writes and `host docs embed` writes).
//!
//! The custom-section helpers here walk only the top-level section headers of
//! the binary; they never parse or rewrite anything else.

use super::reflect::Catalog;
use crate::error::{Error, Result};
use std::path::Path;
use wit_parser::{PackageId, PackageMetadata, Resolve, WorldId};

/// Name of the custom section holding a WIT package's docs.
pub const PACKAGE_DOCS: &str = PackageMetadata::SECTION_NAME;

/// The WIT of the tool world this host provides (`wit/` at the repo root),
/// in dependency order, so a tool's WIT can refer to it without vendoring it.
const HOST_WIT: &[(&str, &str)] = &[
    ("deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
    ("deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    ("deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("world.wit", include_str!("../../../wit/world.wit")),
];

/// A top-level section of a wasm binary: its id and byte range (header included).
struct Section {
    id: u8,
    range: std::ops::Range<usize>,
    custom_name: Option<String>,
    data: std::ops::Range<usize>,
}

fn read_leb_u32(bytes: &[u8], pos: &mut usize) -> Option<u32> {
    let mut result: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        result |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(result);
        }
    }
    None
}

fn write_leb_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// What kind of wasm binary `bytes` is.
pub fn check_header(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(Error::invalid_component(
            "not a WebAssembly binary (no `\\0asm` header)",
        ));
    }
    match (bytes[4..6] == [0x01, 0x00], bytes[6..8] == [0x00, 0x00]) {
        (true, true) => Err(Error::invalid_component(
            "a core WebAssembly module, not a component: build the tool with `--target wasm32-wasip2`",
        )),
        _ if bytes[6..8] == [0x01, 0x00] => Ok(()),
        _ => Err(Error::invalid_component(format!(
            "unsupported WebAssembly binary version/layer {:02x?}",
            &bytes[4..8]
        ))),
    }
}

fn sections(bytes: &[u8]) -> Result<Vec<Section>> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        let start = pos;
        let id = bytes[pos];
        pos += 1;
        let size = read_leb_u32(bytes, &mut pos)
            .ok_or_else(|| Error::invalid_component("malformed section header"))?
            as usize;
        let end = pos
            .checked_add(size)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| Error::invalid_component("section runs past the end of the file"))?;
        let (custom_name, data) = if id == 0 {
            let mut p = pos;
            let len = read_leb_u32(bytes, &mut p)
                .ok_or_else(|| Error::invalid_component("malformed custom section name"))?
                as usize;
            let name_end = p
                .checked_add(len)
                .filter(|e| *e <= end)
                .ok_or_else(|| Error::invalid_component("malformed custom section name"))?;
            let name = String::from_utf8_lossy(&bytes[p..name_end]).into_owned();
            (Some(name), name_end..end)
        } else {
            (None, pos..end)
        };
        out.push(Section {
            id,
            range: start..end,
            custom_name,
            data,
        });
        pos = end;
    }
    Ok(out)
}

/// Split a component into its `package-docs` section data (if any) and the
/// component bytes without such sections.
pub fn split_package_docs(bytes: &[u8]) -> Result<(Option<Vec<u8>>, Vec<u8>)> {
    let sections = sections(bytes)?;
    let mut docs = None;
    let mut rest = bytes[..8].to_vec();
    for s in sections {
        if s.id == 0 && s.custom_name.as_deref() == Some(PACKAGE_DOCS) {
            docs = Some(bytes[s.data].to_vec());
        } else {
            rest.extend_from_slice(&bytes[s.range]);
        }
    }
    Ok((docs, rest))
}

/// Return `bytes` with any `package-docs` section replaced by one holding `data`.
pub fn with_package_docs(bytes: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    check_header(bytes)?;
    let (_, mut out) = split_package_docs(bytes)?;
    let mut body = Vec::with_capacity(data.len() + 16);
    write_leb_u32(&mut body, PACKAGE_DOCS.len() as u32);
    body.extend_from_slice(PACKAGE_DOCS.as_bytes());
    body.extend_from_slice(data);
    out.push(0);
    let len = u32::try_from(body.len())
        .map_err(|_| Error::invalid_component("docs section too large"))?;
    write_leb_u32(&mut out, len);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Apply a `package-docs` section to a component's decoded WIT.
///
/// The section describes the tool's own WIT package (its world by its real
/// name, its interfaces), while a decoded component has a synthetic
/// `root:component/root` world. World-level docs are applied by giving the
/// root world each documented world's name in turn; interface docs are
/// applied to the package that holds interfaces of those names.
pub fn apply_package_docs(
    resolve: &mut Resolve,
    world: WorldId,
    data: &[u8],
) -> Result<(), String> {
    let (&version, json) = data.split_first().ok_or("empty package-docs section")?;
    let doc: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("package-docs is not JSON: {e}"))?;
    let encode = |v: serde_json::Value| -> Result<PackageMetadata, String> {
        let mut bytes = vec![version];
        bytes.extend(serde_json::to_vec(&v).map_err(|e| e.to_string())?);
        PackageMetadata::decode(&bytes).map_err(|e| format!("{e:#}"))
    };
    let root_pkg = resolve.worlds[world]
        .package
        .ok_or("decoded world has no package")?;
    let mut applied = false;
    let mut errors = Vec::new();
    if let Some(worlds) = doc.get("worlds").and_then(|w| w.as_object()) {
        for (name, meta) in worlds {
            let original = resolve.worlds[world].name.clone();
            rename_world(resolve, root_pkg, &original, name);
            let result = encode(serde_json::json!({ "worlds": { name.clone(): meta } }))
                .and_then(|m| m.inject(resolve, root_pkg).map_err(|e| format!("{e:#}")));
            rename_world(resolve, root_pkg, name, &original);
            match result {
                Ok(()) => {
                    applied = true;
                    break;
                }
                Err(e) => errors.push(format!("world `{name}`: {e}")),
            }
        }
    }
    if let Some(interfaces) = doc.get("interfaces").and_then(|w| w.as_object()) {
        for (name, meta) in interfaces {
            let candidates: Vec<PackageId> = resolve
                .packages
                .iter()
                .filter(|(id, p)| *id != root_pkg && p.interfaces.contains_key(name))
                .map(|(id, _)| id)
                .collect();
            let mut ok = false;
            for pkg in candidates {
                let result = encode(serde_json::json!({ "interfaces": { name.clone(): meta } }))
                    .and_then(|m| m.inject(resolve, pkg).map_err(|e| format!("{e:#}")));
                if result.is_ok() {
                    ok = true;
                    break;
                }
            }
            if ok {
                applied = true;
            } else {
                errors.push(format!("interface `{name}`: not exported by the component"));
            }
        }
    }
    if !applied && !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(())
}

fn rename_world(resolve: &mut Resolve, pkg: PackageId, from: &str, to: &str) {
    let worlds = &mut resolve.packages[pkg].worlds;
    if let Some(id) = worlds.shift_remove(from) {
        worlds.insert(to.to_string(), id);
        resolve.worlds[id].name = to.to_string();
    }
}

/// A tool's WIT source, parsed.
pub struct WitSource {
    pub resolve: Resolve,
    pub package: PackageId,
}

impl WitSource {
    /// Parse a WIT directory (or file). If it refers to `toolhost:tool` or the
    /// WASI packages without vendoring them in `deps/`, the host's own copies
    /// are used.
    pub fn parse(path: &Path) -> Result<WitSource> {
        let mut resolve = Resolve::new();
        let first = resolve.push_path(path);
        let package = match first {
            Ok((pkg, _)) => pkg,
            Err(first_err) => {
                let mut resolve2 = Resolve::new();
                for (name, text) in HOST_WIT {
                    resolve2.push_str(name, text).map_err(|e| {
                        Error::internal(format!(
                            "the host's own WIT ({name}) does not parse: {e:#}"
                        ))
                    })?;
                }
                match resolve2.push_path(path) {
                    Ok((pkg, _)) => {
                        resolve = resolve2;
                        pkg
                    }
                    Err(_) => {
                        return Err(Error::invalid_component(format!(
                            "WIT at {}: {first_err:#}",
                            path.display()
                        )));
                    }
                }
            }
        };
        Ok(WitSource { resolve, package })
    }

    /// The world of this package that describes `component` (the one whose
    /// exports match, or the only one).
    pub fn world_for(&self, component: &Catalog) -> Result<(WorldId, Catalog)> {
        let worlds: Vec<(&String, &WorldId)> =
            self.resolve.packages[self.package].worlds.iter().collect();
        let mut last_err = None;
        for (_, id) in &worlds {
            match Catalog::from_world(&self.resolve, **id) {
                Ok(cat) => {
                    let mut probe = component.clone();
                    match probe.adopt_docs_from(&cat) {
                        Ok(()) => return Ok((**id, cat)),
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(match (worlds.len(), last_err) {
            (0, _) => Error::invalid_component(format!(
                "package `{}` has no world",
                self.resolve.packages[self.package].name
            )),
            (1, Some(e)) => Error::invalid_component(format!(
                "the component does not match its WIT: {}",
                e.message
            )),
            (_, _) => Error::invalid_component(format!(
                "no world of package `{}` matches the component's exports (worlds: {})",
                self.resolve.packages[self.package].name,
                worlds
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })
    }

    /// The `package-docs` section content for this package.
    pub fn package_docs(&self) -> Result<Vec<u8>> {
        PackageMetadata::extract(&self.resolve, self.package)
            .encode()
            .map_err(|e| Error::internal(format!("encoding package-docs: {e:#}")))
    }
}
