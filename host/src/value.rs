//! JSON <-> component values, driven by [`Ty`].
//!
//! The mapping (also in the README, and mirrored by [`crate::schema`]):
//!
//! | WIT | JSON |
//! |---|---|
//! | `bool` | `true` / `false` |
//! | `s8`..`u64` | integer in range (an integral float such as `3.0` is accepted) |
//! | `f32`, `f64` | number; `"NaN"`, `"Infinity"`, `"-Infinity"` as strings |
//! | `char` | string of one Unicode scalar value |
//! | `string` | string |
//! | `list<u8>` | base64 string (standard alphabet, padded); an array of bytes is accepted on input |
//! | `list<T>`, `list<T, N>` | array |
//! | `map<string, V>` | object; other keys: array of `[key, value]` pairs |
//! | `tuple<..>` | array of exactly its length |
//! | `record` | object keyed by field name (kebab-case as in WIT; snake_case accepted); unknown fields are errors; a missing `option` field is `none` |
//! | `variant` | `"case"` for a case without payload, `{"case": payload}` otherwise |
//! | `enum` | `"case"` |
//! | `flags` | array of set flag names |
//! | `option<T>` | `null` for none, the value for some; when `T` is itself an option, some is `{"some": value}` |
//! | `result<T, E>` | `{"ok": value}` or `{"err": value}` (`null` when that side has no type) |
//!
//! Errors name the JSON path of the offending value: `args.c.tier: expected
//! one of free, pro, enterprise`.

use crate::tool::{Param, Ty};
use base64::Engine as _;
use serde_json::{Map, Value};
use wasmtime::component::Val;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A JSON path being walked, formatted only when an error needs it.
struct Path<'a> {
    segments: Vec<Seg<'a>>,
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl<'a> Path<'a> {
    fn new() -> Self {
        Path {
            segments: vec![Seg::Key("args")],
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> String {
        let mut s = String::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => s.push_str(k),
                Seg::Key(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                Seg::Index(n) => s.push_str(&format!("[{n}]")),
            }
        }
        format!("{s}: {msg}")
    }

    fn with<T>(&mut self, seg: Seg<'a>, f: impl FnOnce(&mut Self) -> T) -> T {
        self.segments.push(seg);
        let r = f(self);
        self.segments.pop();
        r
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Look a key up as written (kebab-case) or in snake_case. Both spellings at
/// once are an error: one value must not be read one way by policy and
/// another by the guest.
fn lookup<'v>(
    obj: &'v Map<String, Value>,
    name: &str,
    path: &Path,
) -> Result<Option<&'v Value>, String> {
    let snake = name.replace('-', "_");
    match (
        obj.get(name),
        (snake != name).then(|| obj.get(&snake)).flatten(),
    ) {
        (Some(_), Some(_)) => Err(path.err(format!(
            "`{name}` and `{snake}` are two spellings of one name; send only one"
        ))),
        (Some(v), None) | (None, Some(v)) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

/// Whether `key` names one of `names`: as written (kebab-case) or wholly
/// in snake_case (a mixed spelling such as `a-b_c` is no name).
fn known(names: impl Iterator<Item = String>, key: &str) -> bool {
    names
        .into_iter()
        .any(|n| n == key || n.replace('-', "_") == key)
}

/// Convert a call's JSON arguments (an object keyed by parameter name) into
/// component values.
pub fn args_to_vals<'a>(
    function: &str,
    params: &'a [Param],
    args: &'a Value,
) -> Result<Vec<Val>, String> {
    let obj = match args {
        Value::Object(o) => o,
        Value::Null if params.iter().all(|p| matches!(p.ty, Ty::Option(_))) => {
            return Ok(vec![Val::Option(None); params.len()]);
        }
        other => {
            return Err(format!(
                "args: expected a JSON object keyed by parameter name, got {}; `{function}` takes: {}",
                kind(other),
                param_list(params)
            ));
        }
    };
    for key in obj.keys() {
        if !known(params.iter().map(|p| p.name.clone()), key) {
            return Err(format!(
                "args.{key}: unknown argument; `{function}` takes: {}",
                param_list(params)
            ));
        }
    }
    let mut path = Path::new();
    params
        .iter()
        .map(|p| {
            path.with(Seg::Key(&p.name), |path| {
                match lookup(obj, &p.name, path)? {
                    Some(v) => to_val(&p.ty, v, path),
                    None if matches!(p.ty, Ty::Option(_)) => Ok(Val::Option(None)),
                    None => Err(path.err(format!(
                        "missing required argument of type {}",
                        p.ty.wit_name()
                    ))),
                }
            })
        })
        .collect()
}

/// A call's arguments in their one canonical form: the component values the
/// guest receives, and the JSON object of exactly those values (keyed by
/// the WIT parameter names, every value as [`val_to_json`] writes it).
///
/// Invariant: everything that reads a call's arguments (policy, the result
/// cache key, the idempotency fingerprint, redaction, records, the guest)
/// reads this one object, never the request's own spelling of it.
#[derive(Debug, Clone)]
pub struct CanonicalArgs {
    pub vals: Vec<Val>,
    pub json: Value,
}

/// Check and convert a call's JSON arguments into [`CanonicalArgs`].
pub fn canonical_args(
    function: &str,
    params: &[Param],
    args: &Value,
) -> Result<CanonicalArgs, String> {
    let vals = args_to_vals(function, params, args)?;
    let mut json = Map::with_capacity(params.len());
    for (p, v) in params.iter().zip(&vals) {
        let mut unbounded = usize::MAX;
        let value = val_to_json(&p.ty, v, &mut unbounded)
            .map_err(|OverBudget| format!("args.{}: too large", p.name))?;
        json.insert(p.name.clone(), value);
    }
    Ok(CanonicalArgs {
        vals,
        json: Value::Object(json),
    })
}

fn param_list(params: &[Param]) -> String {
    if params.is_empty() {
        return "no arguments".into();
    }
    params
        .iter()
        .map(|p| format!("{}: {}", p.name, p.ty.wit_name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 2^53: below it, a double that is an integer was parsed from that integer.
const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

fn int<T: TryFrom<i128>>(
    v: &Value,
    path: &Path,
    name: &str,
    min: i128,
    max: i128,
) -> Result<T, String> {
    let n: Option<i128> = match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            // Spelled as a float (`5.0`, `1e3`): taken only below 2^53
            // (JavaScript's safe integers), where no other integer's text
            // parses to the same double. From 2^53 on the text may have been
            // another integer, rounded by parsing (2^53 + 1 reads as 2^53,
            // -2^63 - 1 as -2^63).
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.is_finite() && f.abs() < MAX_EXACT_FLOAT)
                    .map(|f| f as i128)
            }),
        _ => None,
    };
    let n = n.ok_or_else(|| {
        let hint = match v {
            Value::Number(n)
                if n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite()) =>
            {
                " (an integer from 2^53 on must be written without a fraction or exponent)"
            }
            _ => "",
        };
        path.err(format!(
            "expected an integer ({name}), got {}{hint}",
            describe(v)
        ))
    })?;
    if n < min || n > max {
        return Err(path.err(format!("{n} is out of range for {name} ({min}..={max})")));
    }
    T::try_from(n).map_err(|_| path.err(format!("{n} is out of range for {name}")))
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{n}"),
        Value::String(s) if s.len() <= 40 => format!("{s:?}"),
        other => kind(other).to_string(),
    }
}

fn float(v: &Value, path: &Path, name: &str) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| path.err(format!("expected a number ({name})"))),
        Value::String(s) if s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        other => Err(path.err(format!(
            "expected a number ({name}), got {}",
            describe(other)
        ))),
    }
}

fn case_names(cases: &[crate::tool::ty::Case]) -> String {
    cases
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_val<'a>(ty: &'a Ty, v: &'a Value, path: &mut Path<'a>) -> Result<Val, String> {
    Ok(match ty {
        Ty::Bool => Val::Bool(
            v.as_bool()
                .ok_or_else(|| path.err(format!("expected a boolean, got {}", describe(v))))?,
        ),
        Ty::S8 => Val::S8(int(v, path, "s8", i8::MIN.into(), i8::MAX.into())?),
        Ty::U8 => Val::U8(int(v, path, "u8", 0, u8::MAX.into())?),
        Ty::S16 => Val::S16(int(v, path, "s16", i16::MIN.into(), i16::MAX.into())?),
        Ty::U16 => Val::U16(int(v, path, "u16", 0, u16::MAX.into())?),
        Ty::S32 => Val::S32(int(v, path, "s32", i32::MIN.into(), i32::MAX.into())?),
        Ty::U32 => Val::U32(int(v, path, "u32", 0, u32::MAX.into())?),
        Ty::S64 => Val::S64(int(v, path, "s64", i64::MIN.into(), i64::MAX.into())?),
        Ty::U64 => Val::U64(int(v, path, "u64", 0, u64::MAX.into())?),
        Ty::F32 => {
            let f = float(v, path, "f32")?;
            if f.is_finite() && f.abs() > f64::from(f32::MAX) {
                return Err(path.err(format!("{f} is out of range for f32")));
            }
            Val::Float32(f as f32)
        }
        Ty::F64 => Val::Float64(float(v, path, "f64")?),
        Ty::Char => {
            let s = v.as_str().ok_or_else(|| {
                path.err(format!(
                    "expected a one-character string, got {}",
                    describe(v)
                ))
            })?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => return Err(path.err(format!("expected exactly one character, got {s:?}"))),
            }
        }
        Ty::String => Val::String(
            v.as_str()
                .ok_or_else(|| path.err(format!("expected a string, got {}", describe(v))))?
                .to_string(),
        ),
        Ty::List(elem) if **elem == Ty::U8 => match v {
            Value::String(s) => Val::List(
                B64.decode(s)
                    .map_err(|e| path.err(format!("expected base64 (list<u8>): {e}")))?
                    .into_iter()
                    .map(Val::U8)
                    .collect(),
            ),
            Value::Array(items) => list(elem, items, path)?,
            other => {
                return Err(path.err(format!(
                    "expected a base64 string (list<u8>), got {}",
                    kind(other)
                )));
            }
        },
        Ty::List(elem) => match v {
            Value::Array(items) => list(elem, items, path)?,
            other => return Err(path.err(format!("expected an array, got {}", kind(other)))),
        },
        Ty::FixedList(elem, n) => match v {
            Value::Array(items) if items.len() == *n as usize => match list(elem, items, path)? {
                Val::List(vals) => Val::FixedLengthList(vals),
                _ => unreachable!("list() returns Val::List"),
            },
            Value::Array(items) => {
                return Err(path.err(format!("expected exactly {n} items, got {}", items.len())));
            }
            other => return Err(path.err(format!("expected an array, got {}", kind(other)))),
        },
        Ty::Map(k, val) => match (&**k, v) {
            (Ty::String, Value::Object(obj)) => {
                let mut pairs = Vec::with_capacity(obj.len());
                for (key, item) in obj {
                    let item = path.with(Seg::Key(key), |p| to_val(val, item, p))?;
                    pairs.push((Val::String(key.clone()), item));
                }
                Val::Map(pairs)
            }
            (_, Value::Array(items)) => {
                let mut pairs = Vec::with_capacity(items.len());
                // One key twice: the guest would get both pairs, every JSON
                // reader one of them.
                let mut seen = std::collections::HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let pair = path.with(Seg::Index(i), |p| match item {
                        Value::Array(kv) if kv.len() == 2 => {
                            let key = p.with(Seg::Index(0), |p| to_val(k, &kv[0], p))?;
                            let mut unbounded = usize::MAX;
                            let canonical = val_to_json(k, &key, &mut unbounded)
                                .map(|j| crate::audit::canonical::canonical_json(&j))
                                .unwrap_or_default();
                            if !seen.insert(canonical) {
                                return Err(p.err(format!("the key {} appears twice", kv[0])));
                            }
                            Ok((key, p.with(Seg::Index(1), |p| to_val(val, &kv[1], p))?))
                        }
                        _ => Err(p.err("expected a [key, value] pair")),
                    })?;
                    pairs.push(pair);
                }
                Val::Map(pairs)
            }
            (Ty::String, other) => {
                return Err(path.err(format!("expected an object, got {}", kind(other))));
            }
            (_, other) => {
                return Err(path.err(format!(
                    "expected an array of [key, value] pairs, got {}",
                    kind(other)
                )));
            }
        },
        Ty::Tuple(tys) => match v {
            Value::Array(items) if items.len() == tys.len() => Val::Tuple(
                tys.iter()
                    .zip(items)
                    .enumerate()
                    .map(|(i, (t, item))| path.with(Seg::Index(i), |p| to_val(t, item, p)))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Array(items) => {
                return Err(path.err(format!(
                    "expected a tuple of {} items, got {}",
                    tys.len(),
                    items.len()
                )));
            }
            other => {
                return Err(path.err(format!("expected an array (tuple), got {}", kind(other))));
            }
        },
        Ty::Record(rec) => {
            let obj = v
                .as_object()
                .ok_or_else(|| path.err(format!("expected an object, got {}", kind(v))))?;
            for key in obj.keys() {
                if !known(rec.items.iter().map(|f| f.name.clone()), key) {
                    return Err(path.err(format!(
                        "unknown field `{key}`; expected fields: {}",
                        rec.items
                            .iter()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            let mut fields = Vec::with_capacity(rec.items.len());
            for f in &rec.items {
                let val = path.with(Seg::Key(&f.name), |p| match lookup(obj, &f.name, p)? {
                    Some(item) => to_val(&f.ty, item, p),
                    None if matches!(f.ty, Ty::Option(_)) => Ok(Val::Option(None)),
                    None => Err(p.err(format!(
                        "missing required field of type {}",
                        f.ty.wit_name()
                    ))),
                })?;
                fields.push((f.name.clone(), val));
            }
            Val::Record(fields)
        }
        Ty::Enum(e) => {
            let s = v.as_str().ok_or_else(|| {
                path.err(format!(
                    "expected one of {}, got {}",
                    case_names(&e.items),
                    describe(v)
                ))
            })?;
            let case = e
                .items
                .iter()
                .find(|c| c.name == s || c.name == s.replace('_', "-"))
                .ok_or_else(|| {
                    path.err(format!(
                        "expected one of {}, got {s:?}",
                        case_names(&e.items)
                    ))
                })?;
            Val::Enum(case.name.clone())
        }
        Ty::Flags(f) => {
            let items = v.as_array().ok_or_else(|| {
                path.err(format!(
                    "expected an array of flags ({}), got {}",
                    case_names(&f.items),
                    kind(v)
                ))
            })?;
            let mut set = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let name = item.as_str().and_then(|s| {
                    f.items
                        .iter()
                        .find(|c| c.name == s || c.name == s.replace('_', "-"))
                });
                let Some(case) = name else {
                    return Err(path.with(Seg::Index(i), |p| {
                        p.err(format!(
                            "expected one of {}, got {}",
                            case_names(&f.items),
                            describe(item)
                        ))
                    }));
                };
                if !set.contains(&case.name) {
                    set.push(case.name.clone());
                }
            }
            Val::Flags(set)
        }
        Ty::Variant(var) => {
            let (name, payload) = match v {
                Value::String(s) => (s.as_str(), None),
                Value::Object(o) if o.len() == 1 => {
                    let (k, p) = o.iter().next().expect("one entry");
                    (k.as_str(), Some(p))
                }
                other => {
                    return Err(path.err(format!(
                        "expected a case of {} as \"case\" or {{\"case\": payload}}, got {}",
                        case_names(&var.items),
                        kind(other)
                    )));
                }
            };
            let case = var
                .items
                .iter()
                .find(|c| c.name == name || c.name == name.replace('_', "-"))
                .ok_or_else(|| {
                    path.err(format!(
                        "expected one of {}, got {name:?}",
                        case_names(&var.items)
                    ))
                })?;
            let payload = match (&case.ty, payload) {
                (None, None | Some(Value::Null)) => None,
                (None, Some(_)) => {
                    return Err(path.err(format!("case `{}` takes no payload", case.name)));
                }
                (Some(t), Some(p)) => Some(Box::new(
                    path.with(Seg::Key(&case.name), |path| to_val(t, p, path))?,
                )),
                (Some(t), None) => {
                    return Err(path.err(format!(
                        "case `{}` needs a payload of type {}: {{\"{}\": ...}}",
                        case.name,
                        t.wit_name(),
                        case.name
                    )));
                }
            };
            Val::Variant(case.name.clone(), payload)
        }
        Ty::Option(inner) => match v {
            Value::Null => Val::Option(None),
            _ if matches!(**inner, Ty::Option(_)) => match v {
                Value::Object(o) if o.len() == 1 && o.contains_key("some") => Val::Option(Some(
                    Box::new(path.with(Seg::Key("some"), |p| to_val(inner, &o["some"], p))?),
                )),
                other => {
                    return Err(path.err(format!(
                        "expected null or {{\"some\": value}} (nested option), got {}",
                        kind(other)
                    )));
                }
            },
            other => Val::Option(Some(Box::new(to_val(inner, other, path)?))),
        },
        Ty::Result { ok, err } => {
            let obj = v.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
                path.err(format!(
                    "expected {{\"ok\": value}} or {{\"err\": value}}, got {}",
                    kind(v)
                ))
            })?;
            let (k, payload) = obj.iter().next().expect("one entry");
            let side = |t: &'a Option<Box<Ty>>,
                        path: &mut Path<'a>,
                        key: &'a str|
             -> Result<Option<Box<Val>>, String> {
                match t {
                    None if payload.is_null() => Ok(None),
                    None => Err(path.err(format!("`{key}` takes no value (use null)"))),
                    Some(t) => Ok(Some(Box::new(
                        path.with(Seg::Key(key), |p| to_val(t, payload, p))?,
                    ))),
                }
            };
            match k.as_str() {
                "ok" => Val::Result(Ok(side(ok, path, "ok")?)),
                "err" => Val::Result(Err(side(err, path, "err")?)),
                other => {
                    return Err(path.err(format!("expected key `ok` or `err`, got `{other}`")));
                }
            }
        }
    })
}

fn list<'a>(elem: &'a Ty, items: &'a [Value], path: &mut Path<'a>) -> Result<Val, String> {
    Ok(Val::List(
        items
            .iter()
            .enumerate()
            .map(|(i, item)| path.with(Seg::Index(i), |p| to_val(elem, item, p)))
            .collect::<Result<_, _>>()?,
    ))
}

/// Deserialize a JSON value, refusing an object that names one key twice.
/// (serde_json keeps the last; a proxy or WAF in front may keep the first:
/// two readers of one request must never see two values.)
pub fn strict_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    <Strict as serde::Deserialize>::deserialize(d).map(|s| s.0)
}

/// The first key a JSON document names twice in one object (anywhere in
/// it), in one pass that builds nothing: `Some(why)`. `None` when there is
/// none, and for a document that is not valid JSON (its reader says so).
pub fn repeated_key(body: &[u8]) -> Option<String> {
    use serde::de::{Deserializer as _, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    const TWICE: &str = "appears twice in one object";
    struct Unique;
    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut keys: std::collections::HashSet<Cow<'de, str>> =
                std::collections::HashSet::new();
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                if keys.contains(&key) {
                    return Err(serde::de::Error::custom(format!("the key `{key}` {TWICE}")));
                }
                keys.insert(key);
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    /// A key, borrowed from the body unless it had escapes.
    struct Key<'de>(Cow<'de, str>);
    impl<'de> serde::Deserialize<'de> for Key<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a key")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_string())))
                }
            }
            d.deserialize_str(V)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match de.deserialize_any(Unique) {
        Err(e) if e.to_string().contains(TWICE) => Some(e.to_string()),
        _ => None,
    }
}

/// [`strict_json`] for an optional field.
pub fn strict_json_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    strict_json(d).map(|v| (!v.is_null()).then_some(v))
}

struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Strict;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
                Ok(Strict(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
                Ok(Strict(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
                Ok(Strict(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
                Ok(Strict(
                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
                Ok(Strict(Value::String(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Strict, E> {
                Ok(Strict(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<Strict, E> {
                Ok(Strict(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Strict, E> {
                Ok(Strict(Value::Null))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Strict, A::Error> {
                let mut items = Vec::new();
                while let Some(Strict(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Strict(Value::Array(items)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Strict, A::Error> {
                let mut out = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let Strict(v) = map.next_value()?;
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "the key `{key}` appears twice in one object"
                        )));
                    }
                    out.insert(key, v);
                }
                Ok(Strict(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Scrub the strings and byte lists of a component value in place.
pub fn scrub_val(v: &mut Val, s: &crate::secrets::Scrubber) {
    if s.is_empty() {
        return;
    }
    match v {
        Val::String(text) => {
            s.string(text);
        }
        Val::List(items) | Val::FixedLengthList(items)
            if !items.is_empty() && items.iter().all(|i| matches!(i, Val::U8(_))) =>
        {
            let mut bytes: Vec<u8> = items
                .iter()
                .map(|i| match i {
                    Val::U8(b) => *b,
                    _ => 0,
                })
                .collect();
            if s.bytes(&mut bytes) {
                *items = bytes.into_iter().map(Val::U8).collect();
            }
        }
        Val::List(items) | Val::FixedLengthList(items) | Val::Tuple(items) => {
            items.iter_mut().for_each(|i| scrub_val(i, s));
        }
        Val::Record(fields) => fields.iter_mut().for_each(|(_, f)| scrub_val(f, s)),
        Val::Map(pairs) => pairs.iter_mut().for_each(|(k, v)| {
            scrub_val(k, s);
            scrub_val(v, s);
        }),
        Val::Variant(_, Some(p)) | Val::Option(Some(p)) => scrub_val(p, s),
        Val::Result(Ok(Some(p)) | Err(Some(p))) => scrub_val(p, s),
        _ => {}
    }
}

/// The JSON form of a result would exceed its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

/// Convert a component value to JSON. `budget` is the most bytes the JSON may
/// take (roughly, as compact text); conversion stops as soon as it is spent,
/// so an oversized result never becomes an oversized JSON tree.
pub fn val_to_json(ty: &Ty, val: &Val, budget: &mut usize) -> Result<Value, OverBudget> {
    fn spend(budget: &mut usize, n: usize) -> Result<(), OverBudget> {
        *budget = budget.checked_sub(n).ok_or(OverBudget)?;
        Ok(())
    }
    fn num(f: f64) -> Value {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| {
                Value::String(
                    if f.is_nan() {
                        "NaN"
                    } else if f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    }
                    .into(),
                )
            })
    }
    spend(budget, 2)?;
    Ok(match (ty, val) {
        (_, Val::Bool(b)) => Value::Bool(*b),
        (_, Val::S8(n)) => (*n).into(),
        (_, Val::U8(n)) => (*n).into(),
        (_, Val::S16(n)) => (*n).into(),
        (_, Val::U16(n)) => (*n).into(),
        (_, Val::S32(n)) => (*n).into(),
        (_, Val::U32(n)) => (*n).into(),
        (_, Val::S64(n)) => {
            spend(budget, 18)?;
            (*n).into()
        }
        (_, Val::U64(n)) => {
            spend(budget, 18)?;
            (*n).into()
        }
        (_, Val::Float32(f)) => {
            spend(budget, 12)?;
            num(f64::from(*f))
        }
        (_, Val::Float64(f)) => {
            spend(budget, 20)?;
            num(*f)
        }
        (_, Val::Char(c)) => Value::String(c.to_string()),
        (_, Val::String(s)) => {
            spend(budget, s.len())?;
            Value::String(s.clone())
        }
        (Ty::List(elem), Val::List(items)) if **elem == Ty::U8 => {
            spend(budget, items.len() * 4 / 3 + 4)?;
            let bytes: Vec<u8> = items
                .iter()
                .map(|v| match v {
                    Val::U8(b) => *b,
                    _ => 0,
                })
                .collect();
            Value::String(B64.encode(bytes))
        }
        (
            Ty::List(elem) | Ty::FixedList(elem, _),
            Val::List(items) | Val::FixedLengthList(items),
        ) => Value::Array(
            items
                .iter()
                .map(|v| val_to_json(elem, v, budget))
                .collect::<Result<_, _>>()?,
        ),
        (Ty::Map(k, v), Val::Map(pairs)) => {
            if **k == Ty::String {
                let mut obj = Map::new();
                for (key, value) in pairs {
                    if let Val::String(key) = key {
                        spend(budget, key.len())?;
                        obj.insert(key.clone(), val_to_json(v, value, budget)?);
                    }
                }
                Value::Object(obj)
            } else {
                Value::Array(
                    pairs
                        .iter()
                        .map(|(key, value)| {
                            Ok(Value::Array(vec![
                                val_to_json(k, key, budget)?,
                                val_to_json(v, value, budget)?,
                            ]))
                        })
                        .collect::<Result<_, OverBudget>>()?,
                )
            }
        }
        (Ty::Tuple(tys), Val::Tuple(items)) => Value::Array(
            tys.iter()
                .zip(items)
                .map(|(t, v)| val_to_json(t, v, budget))
                .collect::<Result<_, _>>()?,
        ),
        (Ty::Record(rec), Val::Record(fields)) => {
            let mut obj = Map::new();
            for (f, (name, v)) in rec.items.iter().zip(fields) {
                spend(budget, name.len() + 4)?;
                obj.insert(name.clone(), val_to_json(&f.ty, v, budget)?);
            }
            Value::Object(obj)
        }
        (_, Val::Enum(name)) => Value::String(name.clone()),
        (_, Val::Flags(names)) => {
            spend(budget, names.iter().map(|n| n.len() + 3).sum())?;
            Value::Array(names.iter().map(|n| Value::String(n.clone())).collect())
        }
        (Ty::Variant(var), Val::Variant(name, payload)) => {
            spend(budget, name.len())?;
            let case_ty = var
                .items
                .iter()
                .find(|c| &c.name == name)
                .and_then(|c| c.ty.as_ref());
            match (case_ty, payload) {
                (Some(t), Some(p)) => {
                    let mut obj = Map::new();
                    obj.insert(name.clone(), val_to_json(t, p, budget)?);
                    Value::Object(obj)
                }
                _ => Value::String(name.clone()),
            }
        }
        (Ty::Option(inner), Val::Option(opt)) => match opt {
            None => Value::Null,
            Some(v) if matches!(**inner, Ty::Option(_)) => {
                let mut obj = Map::new();
                obj.insert("some".into(), val_to_json(inner, v, budget)?);
                Value::Object(obj)
            }
            Some(v) => val_to_json(inner, v, budget)?,
        },
        (Ty::Result { ok, err }, Val::Result(r)) => {
            let (key, t, v) = match r {
                Ok(v) => ("ok", ok, v),
                Err(v) => ("err", err, v),
            };
            let inner = match (t, v) {
                (Some(t), Some(v)) => val_to_json(t, v, budget)?,
                _ => Value::Null,
            };
            let mut obj = Map::new();
            obj.insert(key.into(), inner);
            Value::Object(obj)
        }
        // Type and value disagree: cannot happen for values the component
        // produced for this function; render nothing rather than panic.
        _ => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::repeated_key;

    #[test]
    fn repeated_keys_are_found_anywhere_and_only_within_one_object() {
        for twice in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"p": {"args": {"x": [1, {"k": 1, "k": 2}]}}}"#,
            // The same key once escaped: every decoding reader sees it twice.
            r#"{"a": 1, "\u0061": 2}"#,
        ] {
            let why = repeated_key(twice.as_bytes()).unwrap_or_else(|| panic!("{twice}"));
            assert!(why.contains("appears twice"), "{why}");
        }
        for once in [
            r#"{"a": {"x": 1}, "b": {"x": 2}}"#,
            r#"[{"a": 1}, {"a": 2}]"#,
            r#""plain""#,
            // Not JSON at all: its reader's to refuse.
            r#"{"a": 1,"#,
        ] {
            assert_eq!(repeated_key(once.as_bytes()), None, "{once}");
        }
        // Many keys: one pass, not quadratic.
        let many: String = (0..50_000)
            .map(|i| format!("\"k{i}\": 0"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(repeated_key(format!("{{{many}}}").as_bytes()), None);
        let with_dup = format!("{{{many}, \"k7\": 1}}");
        assert!(repeated_key(with_dup.as_bytes()).is_some());
    }
}
