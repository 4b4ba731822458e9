//! JSON Schema (draft 2020-12) for a tool's functions, and the tool-definition
//! formats LLM APIs take.
//!
//! The schemas describe exactly what [`crate::value`] accepts and produces;
//! see the mapping table there.

use crate::tool::{FunctionInfo, Ty};
use serde_json::{Map, Value, json};

pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

fn obj(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn with_docs(mut schema: Value, title: &Option<String>, docs: &Option<String>) -> Value {
    if let Value::Object(m) = &mut schema {
        if let Some(t) = title {
            m.insert("title".into(), Value::String(t.clone()));
        }
        if let Some(d) = docs {
            m.insert("description".into(), Value::String(d.trim().to_string()));
        }
    }
    schema
}

fn int(min: i128, max: i128) -> Value {
    obj([
        ("type", "integer".into()),
        ("minimum", num(min)),
        ("maximum", num(max)),
    ])
}

fn num(n: i128) -> Value {
    if let Ok(i) = i64::try_from(n) {
        i.into()
    } else {
        u64::try_from(n).map(Value::from).unwrap_or(Value::Null)
    }
}

/// One object with one required key.
fn tagged(key: &str, schema: Value) -> Value {
    let mut props = Map::new();
    props.insert(key.to_string(), schema);
    obj([
        ("type", "object".into()),
        ("properties", Value::Object(props)),
        ("required", json!([key])),
        ("additionalProperties", false.into()),
    ])
}

/// The JSON Schema of a value of type `ty`.
pub fn schema(ty: &Ty) -> Value {
    match ty {
        Ty::Bool => json!({"type": "boolean"}),
        Ty::S8 => int(i8::MIN.into(), i8::MAX.into()),
        Ty::U8 => int(0, u8::MAX.into()),
        Ty::S16 => int(i16::MIN.into(), i16::MAX.into()),
        Ty::U16 => int(0, u16::MAX.into()),
        Ty::S32 => int(i32::MIN.into(), i32::MAX.into()),
        Ty::U32 => int(0, u32::MAX.into()),
        Ty::S64 => int(i64::MIN.into(), i64::MAX.into()),
        Ty::U64 => int(0, u64::MAX.into()),
        Ty::F32 | Ty::F64 => json!({
            "anyOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]
        }),
        Ty::Char => json!({"type": "string", "minLength": 1, "maxLength": 1}),
        Ty::String => json!({"type": "string"}),
        Ty::List(elem) if **elem == Ty::U8 => {
            json!({"type": "string", "contentEncoding": "base64"})
        }
        Ty::List(elem) => json!({"type": "array", "items": schema(elem)}),
        Ty::FixedList(elem, n) => {
            json!({"type": "array", "items": schema(elem), "minItems": n, "maxItems": n})
        }
        Ty::Map(k, v) if **k == Ty::String => {
            json!({"type": "object", "additionalProperties": schema(v)})
        }
        Ty::Map(k, v) => json!({
            "type": "array",
            "items": {"type": "array", "prefixItems": [schema(k), schema(v)], "items": false, "minItems": 2, "maxItems": 2}
        }),
        Ty::Tuple(tys) => json!({
            "type": "array",
            "prefixItems": tys.iter().map(schema).collect::<Vec<_>>(),
            "items": false,
            "minItems": tys.len(),
            "maxItems": tys.len(),
        }),
        Ty::Record(rec) => {
            let mut props = Map::new();
            let mut required = Vec::new();
            for f in &rec.items {
                let mut s = schema(&f.ty);
                if let (Some(d), Value::Object(m)) = (&f.docs, &mut s) {
                    m.insert("description".into(), Value::String(d.trim().to_string()));
                }
                props.insert(f.name.clone(), s);
                if !matches!(f.ty, Ty::Option(_)) {
                    required.push(Value::String(f.name.clone()));
                }
            }
            with_docs(
                obj([
                    ("type", "object".into()),
                    ("properties", Value::Object(props)),
                    ("required", Value::Array(required)),
                    ("additionalProperties", false.into()),
                ]),
                &rec.name,
                &rec.docs,
            )
        }
        Ty::Enum(e) => {
            let mut s = json!({
                "type": "string",
                "enum": e.items.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            });
            let documented: Vec<String> = e
                .items
                .iter()
                .filter_map(|c| {
                    c.docs
                        .as_ref()
                        .map(|d| format!("`{}`: {}", c.name, d.trim()))
                })
                .collect();
            let docs = match (&e.docs, documented.is_empty()) {
                (d, true) => d.clone(),
                (Some(d), false) => Some(format!("{}\n{}", d.trim(), documented.join("\n"))),
                (None, false) => Some(documented.join("\n")),
            };
            s = with_docs(s, &e.name, &docs);
            s
        }
        Ty::Flags(f) => with_docs(
            json!({
                "type": "array",
                "items": {"type": "string", "enum": f.items.iter().map(|c| c.name.clone()).collect::<Vec<_>>()},
                "uniqueItems": true,
            }),
            &f.name,
            &f.docs,
        ),
        Ty::Variant(v) => {
            let cases: Vec<Value> = v
                .items
                .iter()
                .map(|c| {
                    let s = match &c.ty {
                        None => json!({"const": c.name}),
                        Some(t) => tagged(&c.name, schema(t)),
                    };
                    with_docs(s, &None, &c.docs)
                })
                .collect();
            with_docs(json!({"oneOf": cases}), &v.name, &v.docs)
        }
        Ty::Option(inner) if matches!(**inner, Ty::Option(_)) => json!({
            "anyOf": [{"type": "null"}, tagged("some", schema(inner))]
        }),
        Ty::Option(inner) => json!({"anyOf": [schema(inner), {"type": "null"}]}),
        Ty::Result { ok, err } => {
            let side = |t: &Option<Box<Ty>>| t.as_deref().map_or(json!({"type": "null"}), schema);
            json!({"oneOf": [tagged("ok", side(ok)), tagged("err", side(err))]})
        }
    }
}

/// The schema of a function's arguments: an object keyed by parameter name.
pub fn parameters(f: &FunctionInfo) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for p in &f.params {
        props.insert(p.name.clone(), schema(&p.ty));
        if !matches!(p.ty, Ty::Option(_)) {
            required.push(Value::String(p.name.clone()));
        }
    }
    json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

/// The schema of a function's result (`null` when it returns nothing).
pub fn result(f: &FunctionInfo) -> Value {
    f.result.as_ref().map_or(json!({"type": "null"}), schema)
}

/// A name LLM APIs accept (`^[a-zA-Z0-9_-]{1,64}$`): `crm/divide` becomes
/// `crm__divide`. [`crate::tool::Catalog::find`] resolves it back.
pub fn api_name(f: &FunctionInfo) -> String {
    let mut name: String = f
        .name
        .replace('/', "__")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(64);
    name
}

/// The name a function of a registered tool is offered under to LLMs:
/// `<tool>__<api_name>` (tool names never contain `__`, so it splits back).
pub fn llm_name(tool: &str, f: &FunctionInfo) -> String {
    format!("{tool}__{}", api_name(f))
}

/// A tool definition (from [`openai_tool`], [`anthropic_tool`],
/// [`mcp_tool`]) renamed to `name`.
pub fn renamed(mut definition: Value, name: &str) -> Value {
    if let Some(f) = definition.get_mut("function") {
        f["name"] = json!(name);
    } else {
        definition["name"] = json!(name);
    }
    definition
}

/// The function's description for an LLM.
pub fn description(f: &FunctionInfo) -> String {
    f.docs
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("The `{}` function.", f.name))
}

/// An OpenAI function-calling `tools` entry.
pub fn openai_tool(f: &FunctionInfo) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": api_name(f),
            "description": description(f),
            "parameters": parameters(f),
        }
    })
}

/// An Anthropic Messages API `tools` entry.
pub fn anthropic_tool(f: &FunctionInfo) -> Value {
    json!({
        "name": api_name(f),
        "description": description(f),
        "input_schema": parameters(f),
    })
}

/// An MCP `tools/list` entry. `outputSchema` is given when the result is an
/// object (MCP requires an object there); other results are described in
/// text content.
pub fn mcp_tool(f: &FunctionInfo) -> Value {
    let mut tool = json!({
        "name": api_name(f),
        "description": description(f),
        "inputSchema": parameters(f),
    });
    let output = result(f);
    if output.get("type").and_then(Value::as_str) == Some("object") {
        tool["outputSchema"] = output;
    }
    tool
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{FunctionInfo, Param, Ty};

    fn f() -> FunctionInfo {
        FunctionInfo {
            name: "crm/divide".into(),
            interface: Some("example:types/crm".into()),
            function: "divide".into(),
            docs: Some(" Divide a by b. ".into()),
            params: vec![
                Param {
                    name: "a".into(),
                    ty: Ty::S32,
                },
                Param {
                    name: "b".into(),
                    ty: Ty::Option(Box::new(Ty::S32)),
                },
            ],
            result: Some(Ty::S32),
        }
    }

    #[test]
    fn llm_tool_formats() {
        let f = f();
        let openai = openai_tool(&f);
        assert_eq!(openai["function"]["name"], "crm__divide");
        assert_eq!(openai["function"]["description"], "Divide a by b.");
        assert_eq!(openai["function"]["parameters"]["required"], json!(["a"]));
        let anthropic = anthropic_tool(&f);
        assert_eq!(anthropic["name"], "crm__divide");
        assert_eq!(anthropic["input_schema"]["type"], "object");
        let mcp = mcp_tool(&f);
        assert_eq!(
            mcp["inputSchema"]["properties"]["a"]["maximum"],
            json!(i32::MAX)
        );
        assert!(
            mcp.get("outputSchema").is_none(),
            "an integer result is not an object"
        );
    }
}
