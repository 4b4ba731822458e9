//! Canonical JSON, hashing and redaction for audit records.
//!
//! Canonical JSON here: object keys sorted by their UTF-8 bytes, no
//! insignificant whitespace, numbers and strings as `serde_json` writes them.
//! Two equal JSON values always give the same bytes, so their SHA-256 is a
//! stable fingerprint.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The canonical JSON text of a value.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a value's canonical JSON.
pub fn fingerprint(v: &Value) -> String {
    sha256_hex(canonical_json(v).as_bytes())
}

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// A copy of `v` with every object member named in `fields` (compared in
/// snake_case, case-insensitively) replaced by `"[REDACTED]"`, at any depth.
pub fn redact(v: &Value, fields: &[String]) -> Value {
    if fields.is_empty() {
        return v.clone();
    }
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let fields: Vec<String> = fields.iter().map(|f| norm(f)).collect();
    fn walk(v: &Value, fields: &[String], norm: &dyn Fn(&str) -> String) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if fields.contains(&norm(k)) {
                            Value::String(REDACTED.into())
                        } else {
                            walk(v, fields, norm)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.iter().map(|i| walk(i, fields, norm)).collect())
            }
            other => other.clone(),
        }
    }
    walk(v, &fields, &norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_is_order_independent() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn redaction_reaches_any_depth() {
        let v = json!({"email": "a@b.c", "order": {"card-last4": "1234", "items": [{"Address": "x", "sku": 1}]}});
        let r = redact(&v, &["email".into(), "card_last4".into(), "address".into()]);
        assert_eq!(
            r,
            json!({"email": REDACTED, "order": {"card-last4": REDACTED, "items": [{"Address": REDACTED, "sku": 1}]}})
        );
    }
}
