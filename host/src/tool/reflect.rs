//! Reflection: a component's exported functions and imports, from its WIT.
//!
//! The component's type information is decoded with `wit-parser` (the same
//! decoder `wasm-tools component wit` uses) into a [`Catalog`]. Names and doc
//! comments come along where the WIT has them; see [`super::docs`] for where
//! docs come from when the component carries none.

use super::ty::{Case, Field, Named, Ty};
use crate::error::{Error, Result};
use wit_parser::{FunctionKind, Resolve, Type, TypeDefKind, TypeId, WorldId, WorldItem, WorldKey};

/// One exported function, as callers see it.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    /// The name callers use: `lookup-order` for a top-level export,
    /// `crm/divide` for a function of an exported interface.
    pub name: String,
    /// The exported interface's full name (`example:types/crm`), if any.
    pub interface: Option<String>,
    /// The function's own WIT name.
    pub function: String,
    /// The function's doc comment.
    pub docs: Option<String>,
    pub params: Vec<Param>,
    pub result: Option<Ty>,
}

impl FunctionInfo {
    /// The WIT-like signature: `lookup-order(order-id: string) -> result<order, string>`.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.ty.wit_name()))
            .collect();
        match &self.result {
            Some(r) => format!("{}({}) -> {}", self.name, params.join(", "), r.wit_name()),
            None => format!("{}({})", self.name, params.join(", ")),
        }
    }
}

/// A function parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub ty: Ty,
}

/// Everything a component exports (as functions) and imports (as names).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub functions: Vec<FunctionInfo>,
    /// Import names as the component spells them (`wasi:cli/environment@0.2.6`).
    pub imports: Vec<String>,
    /// Docs of the tool's world or package, if any.
    pub docs: Option<String>,
}

impl Catalog {
    /// Reflect a world of a resolved WIT graph.
    pub fn from_world(resolve: &Resolve, world_id: WorldId) -> Result<Catalog> {
        let world = &resolve.worlds[world_id];
        let mut catalog = Catalog {
            docs: world.docs.contents.clone(),
            ..Catalog::default()
        };
        for (key, item) in &world.imports {
            match item {
                WorldItem::Type { .. } => {}
                _ => catalog.imports.push(resolve.name_world_key(key)),
            }
        }
        // Short interface names (`crm`) qualify functions unless two exported
        // interfaces share one; then the full name is used.
        let mut short_names: Vec<String> = Vec::new();
        for (key, item) in &world.exports {
            if let WorldItem::Interface { id, .. } = item {
                short_names.push(short_interface_name(resolve, key, *id));
            }
        }
        for (key, item) in &world.exports {
            match item {
                WorldItem::Function(f) => {
                    catalog
                        .functions
                        .push(function(resolve, f, None, f.name.clone())?);
                }
                WorldItem::Interface { id, .. } if toolchain_internal(resolve, key, *id) => {}
                WorldItem::Interface { id, .. } => {
                    let full = resolve.name_world_key(key);
                    let short = short_interface_name(resolve, key, *id);
                    let prefix = if short_names.iter().filter(|s| **s == short).count() > 1 {
                        full.clone()
                    } else {
                        short
                    };
                    let iface = &resolve.interfaces[*id];
                    for ty in iface.types.values() {
                        if matches!(resolve.types[*ty].kind, TypeDefKind::Resource) {
                            return Err(Error::invalid_component(format!(
                                "exported interface `{full}` defines resource `{}`: resources are not supported in tools",
                                resolve.types[*ty].name.as_deref().unwrap_or("?")
                            )));
                        }
                    }
                    for f in iface.functions.values() {
                        let name = format!("{prefix}/{}", f.name);
                        catalog
                            .functions
                            .push(function(resolve, f, Some(full.clone()), name)?);
                    }
                }
                WorldItem::Type { .. } => {}
            }
        }
        Ok(catalog)
    }

    /// Find a function by the name a caller gave: the qualified name
    /// (`crm/divide`), the interface's full name plus function
    /// (`example:types/crm/divide`), or the bare function name when only one
    /// function has it. snake_case is accepted for kebab-case names.
    pub fn find(&self, wanted: &str) -> Result<&FunctionInfo> {
        let norm = normalize(wanted);
        if let Some(f) = self.functions.iter().find(|f| normalize(&f.name) == norm) {
            return Ok(f);
        }
        if let Some(f) = self.functions.iter().find(|f| {
            f.interface
                .as_ref()
                .is_some_and(|i| normalize(&format!("{i}/{}", f.function)) == norm)
        }) {
            return Ok(f);
        }
        let bare: Vec<&FunctionInfo> = self
            .functions
            .iter()
            .filter(|f| normalize(&f.function) == norm)
            .collect();
        match bare.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::new(
                crate::ErrorKind::UnknownFunction,
                format!(
                    "no function `{wanted}`; the tool exports: {}",
                    self.names().join(", ")
                ),
            )),
            many => Err(Error::new(
                crate::ErrorKind::UnknownFunction,
                format!(
                    "`{wanted}` is ambiguous; say which: {}",
                    many.iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The qualified names of all functions.
    pub fn names(&self) -> Vec<&str> {
        self.functions.iter().map(|f| f.name.as_str()).collect()
    }

    /// Check that `source` (reflected from WIT source) describes the same
    /// functions with the same types as this catalog (reflected from the
    /// component), then take its names and docs.
    pub fn adopt_docs_from(&mut self, source: &Catalog) -> Result<()> {
        for f in &mut self.functions {
            let Some(s) = source
                .functions
                .iter()
                .find(|s| s.function == f.function && same_interface(&s.interface, &f.interface))
            else {
                return Err(Error::invalid_component(format!(
                    "the component exports `{}` but the WIT does not",
                    f.name
                )));
            };
            let sig = |f: &FunctionInfo| {
                let params: Vec<String> = f
                    .params
                    .iter()
                    .map(|p| format!("{}: {}", p.name, p.ty.wit_name()))
                    .collect();
                format!("({})", params.join(", "))
            };
            let same = f.params.len() == s.params.len()
                && f.params
                    .iter()
                    .zip(&s.params)
                    .all(|(a, b)| a.name == b.name && a.ty.same_shape(&b.ty))
                && match (&f.result, &s.result) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.same_shape(b),
                    _ => false,
                };
            if !same {
                return Err(Error::invalid_component(format!(
                    "`{}` differs between the component {} and the WIT {}",
                    f.name,
                    sig(f),
                    sig(s)
                )));
            }
            if s.docs.is_some() {
                f.docs.clone_from(&s.docs);
            }
            for (p, sp) in f.params.iter_mut().zip(&s.params) {
                p.ty.adopt_docs(&sp.ty);
            }
            if let (Some(r), Some(sr)) = (&mut f.result, &s.result) {
                r.adopt_docs(sr);
            }
        }
        if let Some(extra) = source.functions.iter().find(|s| {
            !self
                .functions
                .iter()
                .any(|f| f.function == s.function && same_interface(&s.interface, &f.interface))
        }) {
            return Err(Error::invalid_component(format!(
                "the WIT exports `{}` but the component does not",
                extra.name
            )));
        }
        if source.docs.is_some() {
            self.docs.clone_from(&source.docs);
        }
        Ok(())
    }
}

/// Exports a language toolchain adds for itself, not for callers: hidden
/// from the catalog so no agent can call them. componentize-py exports an
/// inline interface `exports` with `init(app-name, symbols, stub-wasi)`, its
/// pre-initialisation hook.
fn toolchain_internal(resolve: &Resolve, key: &WorldKey, id: wit_parser::InterfaceId) -> bool {
    let iface = &resolve.interfaces[id];
    matches!(key, WorldKey::Name(n) if n == "exports")
        && iface.name.is_none()
        && iface.functions.len() == 1
        && iface
            .functions
            .get("init")
            .is_some_and(|f| f.params.iter().any(|p| p.name == "symbols"))
}

/// Interface names compared without their version.
fn same_interface(a: &Option<String>, b: &Option<String>) -> bool {
    let strip = |s: &String| s.split('@').next().unwrap_or_default().to_string();
    a.as_ref().map(strip) == b.as_ref().map(strip)
}

/// Function names compare as kebab-case; `__` stands for `/` (the form LLM
/// APIs accept, see [`crate::schema::api_name`]).
pub fn normalize(name: &str) -> String {
    name.replace("__", "/").replace('_', "-")
}

fn short_interface_name(resolve: &Resolve, key: &WorldKey, id: wit_parser::InterfaceId) -> String {
    match key {
        WorldKey::Name(n) => n.clone(),
        WorldKey::Interface(_) => resolve.interfaces[id]
            .name
            .clone()
            .unwrap_or_else(|| resolve.name_world_key(key)),
    }
}

fn function(
    resolve: &Resolve,
    f: &wit_parser::Function,
    interface: Option<String>,
    name: String,
) -> Result<FunctionInfo> {
    match f.kind {
        FunctionKind::Freestanding => {}
        FunctionKind::AsyncFreestanding => {
            return Err(Error::invalid_component(format!(
                "function `{name}` is `async`: async exports are not supported yet"
            )));
        }
        _ => {
            return Err(Error::invalid_component(format!(
                "function `{name}` is a resource method: resources are not supported in tools"
            )));
        }
    }
    let mut params = Vec::with_capacity(f.params.len());
    for p in &f.params {
        let ty = ty(resolve, &p.ty).map_err(|why| {
            Error::invalid_component(format!("function `{name}`, parameter `{}`: {why}", p.name))
        })?;
        params.push(Param {
            name: p.name.clone(),
            ty,
        });
    }
    let result = match &f.result {
        None => None,
        Some(t) => Some(ty(resolve, t).map_err(|why| {
            Error::invalid_component(format!("function `{name}`, result: {why}"))
        })?),
    };
    Ok(FunctionInfo {
        name,
        interface,
        function: f.name.clone(),
        docs: f.docs.contents.clone(),
        params,
        result,
    })
}

/// Convert a WIT type, or say why it is not supported.
fn ty(resolve: &Resolve, t: &Type) -> std::result::Result<Ty, String> {
    Ok(match t {
        Type::Bool => Ty::Bool,
        Type::U8 => Ty::U8,
        Type::U16 => Ty::U16,
        Type::U32 => Ty::U32,
        Type::U64 => Ty::U64,
        Type::S8 => Ty::S8,
        Type::S16 => Ty::S16,
        Type::S32 => Ty::S32,
        Type::S64 => Ty::S64,
        Type::F32 => Ty::F32,
        Type::F64 => Ty::F64,
        Type::Char => Ty::Char,
        Type::String => Ty::String,
        Type::ErrorContext => return Err("`error-context` is not supported".into()),
        Type::Id(id) => typedef(resolve, *id)?,
    })
}

/// An enum case or flag: a name and its docs, no payload.
fn plain_case(name: &str, docs: &wit_parser::Docs) -> Case {
    Case {
        name: name.to_string(),
        docs: docs.contents.clone(),
        ty: None,
    }
}

fn typedef(resolve: &Resolve, id: TypeId) -> std::result::Result<Ty, String> {
    let def = &resolve.types[id];
    fn named_as<T>(def: &wit_parser::TypeDef, items: T) -> Named<T> {
        Named {
            name: def.name.clone(),
            docs: def.docs.contents.clone(),
            items,
        }
    }
    let named = |items| named_as(def, items);
    let named_cases = |items| named_as(def, items);
    let opt = |t: &Option<Type>| -> std::result::Result<Option<Box<Ty>>, String> {
        t.as_ref().map(|t| ty(resolve, t).map(Box::new)).transpose()
    };
    Ok(match &def.kind {
        TypeDefKind::Record(r) => Ty::Record(named(
            r.fields
                .iter()
                .map(|f| {
                    Ok(Field {
                        name: f.name.clone(),
                        docs: f.docs.contents.clone(),
                        ty: ty(resolve, &f.ty)?,
                    })
                })
                .collect::<std::result::Result<_, String>>()?,
        )),
        TypeDefKind::Variant(v) => Ty::Variant(named_cases(
            v.cases
                .iter()
                .map(|c| {
                    Ok(Case {
                        name: c.name.clone(),
                        docs: c.docs.contents.clone(),
                        ty: c.ty.as_ref().map(|t| ty(resolve, t)).transpose()?,
                    })
                })
                .collect::<std::result::Result<_, String>>()?,
        )),
        TypeDefKind::Enum(e) => Ty::Enum(named_cases(
            e.cases
                .iter()
                .map(|c| plain_case(&c.name, &c.docs))
                .collect(),
        )),
        TypeDefKind::Flags(f) => Ty::Flags(named_cases(
            f.flags
                .iter()
                .map(|c| plain_case(&c.name, &c.docs))
                .collect(),
        )),
        TypeDefKind::Tuple(t) => Ty::Tuple(
            t.types
                .iter()
                .map(|t| ty(resolve, t))
                .collect::<std::result::Result<_, String>>()?,
        ),
        TypeDefKind::Option(t) => Ty::Option(Box::new(ty(resolve, t)?)),
        TypeDefKind::Result(r) => Ty::Result {
            ok: opt(&r.ok)?,
            err: opt(&r.err)?,
        },
        TypeDefKind::List(t) => Ty::List(Box::new(ty(resolve, t)?)),
        TypeDefKind::FixedLengthList(t, n) => Ty::FixedList(Box::new(ty(resolve, t)?), *n),
        TypeDefKind::Map(k, v) => Ty::Map(Box::new(ty(resolve, k)?), Box::new(ty(resolve, v)?)),
        TypeDefKind::Type(t) => ty(resolve, t)?,
        TypeDefKind::Resource | TypeDefKind::Handle(_) => {
            return Err(format!(
                "resource `{}` (own/borrow) is not supported in tool signatures",
                def.name.as_deref().unwrap_or("?")
            ));
        }
        TypeDefKind::Future(_) | TypeDefKind::Stream(_) => {
            return Err("`future` and `stream` are not supported yet".into());
        }
        TypeDefKind::Unknown => return Err("a type of unknown structure".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(wit: &str) -> Catalog {
        let mut resolve = Resolve::new();
        let pkg = resolve.push_str("test.wit", wit).unwrap();
        let world = resolve.select_world(&[pkg], None).unwrap();
        Catalog::from_world(&resolve, world).unwrap()
    }

    #[test]
    fn componentize_py_init_hook_is_hidden() {
        let c = catalog(
            "package test:py;
             world w {
                 export exports: interface {
                     record symbols { types: list<string> }
                     init: func(app-name: string, symbols: symbols, stub-wasi: bool) -> result<_, string>;
                 }
                 export add: func(a: s32, b: s32) -> s32;
             }",
        );
        assert_eq!(c.names(), vec!["add"]);
    }

    #[test]
    fn a_tools_own_exports_interface_is_kept() {
        let c = catalog(
            "package test:mine;
             world w {
                 export exports: interface { init: func(name: string) -> string; }
             }",
        );
        assert_eq!(c.names(), vec!["exports/init"]);
    }
}
