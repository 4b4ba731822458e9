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
    let mut out = Vec::new();
    write(v, &mut out);
    // Only serde_json's output and ASCII punctuation were written.
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Keys sorted by their UTF-8 bytes, each value taken with its key (no
/// lookup per key); strings and scalars escaped and written by serde_json
/// straight into `out`.
fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                text(k, out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        other => text(other, out),
    }
}

/// A string or scalar as serde_json writes it.
fn text<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string or a JSON scalar into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
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
    fn canonical_text_is_byte_for_byte_what_chains_were_hashed_with() {
        // Escapes, non-ASCII keys (sorted by UTF-8 bytes, not by chars or
        // UTF-16), numbers at their limits: the text every stored entry's
        // hash was computed over must not change.
        let v = json!({
            "z": [1, -0.0, 1.5e300, 18446744073709551615u64, -9223372036854775808i64, null, true],
            "\u{e9}t\u{e9}": "caf\u{e9} \u{1f600}",
            "\u{ff5e}": 1,
            "\u{1f600}": 2,
            "A": {"b\"q": "line\nbreak\ttab\u{0}nul\u{7f}\\", "a": {}},
            "": []
        });
        assert_eq!(
            canonical_json(&v),
            "{\"\":[],\"A\":{\"a\":{},\"b\\\"q\":\"line\\nbreak\\ttab\\u0000nul\u{7f}\\\\\"},\"z\":[1,-0.0,1.5e+300,18446744073709551615,-9223372036854775808,null,true],\"\u{e9}t\u{e9}\":\"caf\u{e9} \u{1f600}\",\"\u{ff5e}\":1,\"\u{1f600}\":2}"
        );
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
