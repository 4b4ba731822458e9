//! The value types a tool's functions take and return.
//!
//! [`Ty`] is Toolhost's own model of a WIT value type, built once when a tool
//! is loaded (from the component's embedded type information, with names and
//! doc comments where available). JSON Schema generation ([`crate::schema`])
//! and JSON <-> component value conversion ([`crate::value`]) both walk it,
//! so the schema a caller sees is exactly what the converter accepts.
//!
//! WIT types cannot be recursive, so a `Ty` is a finite tree.

/// A WIT value type.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Bool,
    S8,
    U8,
    S16,
    U16,
    S32,
    U32,
    S64,
    U64,
    F32,
    F64,
    Char,
    String,
    List(Box<Ty>),
    FixedList(Box<Ty>, u32),
    Map(Box<Ty>, Box<Ty>),
    Tuple(Vec<Ty>),
    Record(Named<Vec<Field>>),
    Variant(Named<Vec<Case>>),
    Enum(Named<Vec<Case>>),
    Flags(Named<Vec<Case>>),
    Option(Box<Ty>),
    Result {
        ok: Option<Box<Ty>>,
        err: Option<Box<Ty>>,
    },
}

/// A named WIT type definition (record, variant, enum, flags) with its docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T> {
    pub name: Option<String>,
    pub docs: Option<String>,
    pub items: T,
}

/// A record field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub docs: Option<String>,
    pub ty: Ty,
}

/// A variant case, enum case or flag. `ty` is `None` for enums, flags and
/// payload-less variant cases.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub name: String,
    pub docs: Option<String>,
    pub ty: Option<Ty>,
}

impl Ty {
    /// The WIT spelling of this type, for error messages.
    pub fn wit_name(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::S8 => "s8".into(),
            Ty::U8 => "u8".into(),
            Ty::S16 => "s16".into(),
            Ty::U16 => "u16".into(),
            Ty::S32 => "s32".into(),
            Ty::U32 => "u32".into(),
            Ty::S64 => "s64".into(),
            Ty::U64 => "u64".into(),
            Ty::F32 => "f32".into(),
            Ty::F64 => "f64".into(),
            Ty::Char => "char".into(),
            Ty::String => "string".into(),
            Ty::List(t) => format!("list<{}>", t.wit_name()),
            Ty::FixedList(t, n) => format!("list<{}, {n}>", t.wit_name()),
            Ty::Map(k, v) => format!("map<{}, {}>", k.wit_name(), v.wit_name()),
            Ty::Tuple(ts) => format!(
                "tuple<{}>",
                ts.iter().map(Ty::wit_name).collect::<Vec<_>>().join(", ")
            ),
            Ty::Record(n) => named("record", &n.name),
            Ty::Variant(n) => named("variant", &n.name),
            Ty::Enum(n) => named("enum", &n.name),
            Ty::Flags(n) => named("flags", &n.name),
            Ty::Option(t) => format!("option<{}>", t.wit_name()),
            Ty::Result { ok, err } => match (ok, err) {
                (None, None) => "result".into(),
                (Some(o), None) => format!("result<{}>", o.wit_name()),
                (None, Some(e)) => format!("result<_, {}>", e.wit_name()),
                (Some(o), Some(e)) => format!("result<{}, {}>", o.wit_name(), e.wit_name()),
            },
        }
    }

    /// Structural equality, ignoring names and docs: do two types accept and
    /// produce the same values?
    pub fn same_shape(&self, other: &Ty) -> bool {
        fn opt(a: &Option<Box<Ty>>, b: &Option<Box<Ty>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_shape(b),
                _ => false,
            }
        }
        fn cases(a: &[Case], b: &[Case]) -> bool {
            a.len() == b.len()
                && a.iter().zip(b).all(|(a, b)| {
                    a.name == b.name
                        && match (&a.ty, &b.ty) {
                            (None, None) => true,
                            (Some(x), Some(y)) => x.same_shape(y),
                            _ => false,
                        }
                })
        }
        match (self, other) {
            (Ty::List(a), Ty::List(b)) | (Ty::Option(a), Ty::Option(b)) => a.same_shape(b),
            (Ty::FixedList(a, n), Ty::FixedList(b, m)) => n == m && a.same_shape(b),
            (Ty::Map(k1, v1), Ty::Map(k2, v2)) => k1.same_shape(k2) && v1.same_shape(v2),
            (Ty::Tuple(a), Ty::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same_shape(b))
            }
            (Ty::Record(a), Ty::Record(b)) => {
                a.items.len() == b.items.len()
                    && a.items
                        .iter()
                        .zip(&b.items)
                        .all(|(a, b)| a.name == b.name && a.ty.same_shape(&b.ty))
            }
            (Ty::Variant(a), Ty::Variant(b))
            | (Ty::Enum(a), Ty::Enum(b))
            | (Ty::Flags(a), Ty::Flags(b)) => cases(&a.items, &b.items),
            (Ty::Result { ok: o1, err: e1 }, Ty::Result { ok: o2, err: e2 }) => {
                opt(o1, o2) && opt(e1, e2)
            }
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b) && a.is_scalar(),
        }
    }

    fn is_scalar(&self) -> bool {
        matches!(
            self,
            Ty::Bool
                | Ty::S8
                | Ty::U8
                | Ty::S16
                | Ty::U16
                | Ty::S32
                | Ty::U32
                | Ty::S64
                | Ty::U64
                | Ty::F32
                | Ty::F64
                | Ty::Char
                | Ty::String
        )
    }

    /// Copy names and docs from `other`, a type of the same shape, wherever
    /// `other` has them. Used to document a component from its WIT source.
    pub fn adopt_docs(&mut self, other: &Ty) {
        fn named<T>(a: &mut Named<T>, b: &Named<T>) {
            if b.name.is_some() {
                a.name.clone_from(&b.name);
            }
            if b.docs.is_some() {
                a.docs.clone_from(&b.docs);
            }
        }
        fn cases(a: &mut Named<Vec<Case>>, b: &Named<Vec<Case>>) {
            named(a, b);
            for (x, y) in a.items.iter_mut().zip(&b.items) {
                if y.docs.is_some() {
                    x.docs.clone_from(&y.docs);
                }
                if let (Some(tx), Some(ty)) = (&mut x.ty, &y.ty) {
                    tx.adopt_docs(ty);
                }
            }
        }
        match (self, other) {
            (Ty::List(a), Ty::List(b))
            | (Ty::Option(a), Ty::Option(b))
            | (Ty::FixedList(a, _), Ty::FixedList(b, _)) => a.adopt_docs(b),
            (Ty::Map(k1, v1), Ty::Map(k2, v2)) => {
                k1.adopt_docs(k2);
                v1.adopt_docs(v2);
            }
            (Ty::Tuple(a), Ty::Tuple(b)) => a.iter_mut().zip(b).for_each(|(a, b)| a.adopt_docs(b)),
            (Ty::Record(a), Ty::Record(b)) => {
                named(a, b);
                for (x, y) in a.items.iter_mut().zip(&b.items) {
                    if y.docs.is_some() {
                        x.docs.clone_from(&y.docs);
                    }
                    x.ty.adopt_docs(&y.ty);
                }
            }
            (Ty::Variant(a), Ty::Variant(b))
            | (Ty::Enum(a), Ty::Enum(b))
            | (Ty::Flags(a), Ty::Flags(b)) => cases(a, b),
            (Ty::Result { ok: o1, err: e1 }, Ty::Result { ok: o2, err: e2 }) => {
                if let (Some(a), Some(b)) = (o1, o2) {
                    a.adopt_docs(b);
                }
                if let (Some(a), Some(b)) = (e1, e2) {
                    a.adopt_docs(b);
                }
            }
            _ => {}
        }
    }
}

fn named(kind: &str, name: &Option<String>) -> String {
    match name {
        Some(n) => n.clone(),
        None => kind.to_string(),
    }
}
