//! Named secrets, resolved at the host boundary.
//!
//! Policies refer to secrets by name, `{{secret:NAME}}`, in outbound HTTP
//! header values and environment variables. Values come from a
//! [`SecretSource`]; a [`Secret`] never prints its value (`Debug` shows
//! `[secret]`), and nothing that writes logs or audit records ever holds one.

use std::collections::HashMap;
use std::path::Path;

/// A secret value. Deliberately not `Display`, `Serialize` or revealing `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

/// Where secret values come from.
pub trait SecretSource: Send + Sync {
    fn get(&self, name: &str) -> Option<Secret>;
}

/// No secrets at all.
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _name: &str) -> Option<Secret> {
        None
    }
}

/// Secrets from a file (a YAML or JSON map of name to value) and from the
/// host's environment as `TOOLHOST_SECRET_<NAME>` (upper-cased, `-` as `_`).
/// The file wins.
#[derive(Default)]
pub struct FileAndEnv {
    values: HashMap<String, String>,
}

impl FileAndEnv {
    pub fn new(file: Option<&Path>) -> Result<FileAndEnv, String> {
        let values = match file {
            None => HashMap::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read secrets file {}: {e}", path.display()))?;
                serde_yaml_ng::from_str(&text).map_err(|e| {
                    format!(
                        "secrets file {}: expected a map of name to string value: {e}",
                        path.display()
                    )
                })?
            }
        };
        Ok(FileAndEnv { values })
    }
}

impl SecretSource for FileAndEnv {
    fn get(&self, name: &str) -> Option<Secret> {
        if let Some(v) = self.values.get(name) {
            return Some(Secret::new(v.clone()));
        }
        let var = format!(
            "TOOLHOST_SECRET_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        std::env::var(var).ok().map(Secret::new)
    }
}

/// Expand `{{secret:NAME}}` references in `template`. Fails naming the first
/// secret that is not set.
pub fn expand(template: &str, source: &dyn SecretSource) -> Result<Secret, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{secret:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{{secret:".len()..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{secret:` in `{template}`"))?;
        let name = after[..end].trim();
        let value = source
            .get(name)
            .ok_or_else(|| format!("secret `{name}` is not set"))?;
        out.push_str(value.expose());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Secret::new(out))
}

/// The values of the secrets `template` names (`{{secret:NAME}}`), where set.
pub fn referenced(template: &str, source: &dyn SecretSource) -> Vec<Secret> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{secret:") {
        let after = &rest[start + "{{secret:".len()..];
        let Some(end) = after.find("}}") else { break };
        if let Some(v) = source.get(after[..end].trim()) {
            out.push(v);
        }
        rest = &after[end + 2..];
    }
    out
}

/// What replaces a scrubbed secret.
pub const SCRUBBED: &str = "[SECRET]";

/// Values shorter than this are not scrubbed: too short to be a secret, and
/// common enough that removing them would mangle honest output.
pub const MIN_SCRUB_LEN: usize = 4;

/// Removes the values the host injected into an invocation (granted
/// environment variables, header values, `{{secret:NAME}}` substitutions)
/// from what the invocation produces, so that a destination that echoes a
/// credential does not hand it to the caller, the records or the audit
/// trail.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so that a value containing another is replaced whole.
    needles: Vec<String>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} values)", self.needles.len())
    }
}

impl Scrubber {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Scrubber {
        let mut needles: Vec<String> = secrets
            .into_iter()
            .map(|s| s.expose().to_string())
            .filter(|s| s.len() >= MIN_SCRUB_LEN)
            .collect();
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Scrubber { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Scrub a string in place; returns whether anything was replaced.
    pub fn string(&self, s: &mut String) -> bool {
        let mut hit = false;
        for n in &self.needles {
            if s.contains(n.as_str()) {
                *s = s.replace(n.as_str(), SCRUBBED);
                hit = true;
            }
        }
        hit
    }

    /// Scrub a byte string in place (a `list<u8>` result, a header value
    /// that is not text); returns whether anything was replaced.
    pub fn bytes(&self, b: &mut Vec<u8>) -> bool {
        if self.is_empty() {
            return false;
        }
        let scrubbed = self.stream().replace(std::mem::take(b));
        let hit = scrubbed
            .windows(SCRUBBED.len())
            .any(|w| w == SCRUBBED.as_bytes());
        *b = scrubbed;
        hit
    }

    /// Scrub a string that was cut short (a capture at its cap): beyond
    /// [`Scrubber::string`], a tail that is the start of a value (at least
    /// [`MIN_SCRUB_LEN`] bytes of it) is replaced too.
    pub fn string_cut(&self, s: &mut String) -> bool {
        let mut hit = self.string(s);
        for n in &self.needles {
            let longest = (MIN_SCRUB_LEN..n.len())
                .rev()
                .find(|&k| n.is_char_boundary(k) && s.ends_with(&n[..k]));
            if let Some(k) = longest {
                s.truncate(s.len() - k);
                s.push_str(SCRUBBED);
                hit = true;
            }
        }
        hit
    }

    /// Scrub every string (and object key) of a JSON value in place.
    pub fn json(&self, v: &mut serde_json::Value) {
        use serde_json::Value;
        if self.is_empty() {
            return;
        }
        match v {
            Value::String(s) => {
                self.string(s);
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.json(i)),
            Value::Object(map) => {
                let needs_rekey = map.keys().any(|k| {
                    let mut k = k.clone();
                    self.string(&mut k)
                });
                if needs_rekey {
                    let old = std::mem::take(map);
                    for (mut k, v) in old {
                        self.string(&mut k);
                        map.insert(k, v);
                    }
                }
                map.values_mut().for_each(|v| self.json(v));
            }
            _ => {}
        }
    }

    /// A scrubber for a byte stream (a response body arriving in chunks).
    pub fn stream(&self) -> StreamScrubber {
        StreamScrubber {
            keep: self.needles.iter().map(String::len).max().unwrap_or(1) - 1,
            needles: self.needles.iter().map(|n| n.as_bytes().to_vec()).collect(),
            carry: Vec::new(),
        }
    }
}

/// Scrubs a byte stream chunk by chunk: holds back the last
/// `longest value - 1` bytes so a value split across chunks is still found.
pub struct StreamScrubber {
    needles: Vec<Vec<u8>>,
    carry: Vec<u8>,
    keep: usize,
}

impl StreamScrubber {
    /// Feed a chunk; returns the bytes that are safe to pass on.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let carried = std::mem::take(&mut self.carry);
        let mut buf = self.replace(carried);
        let emit = buf.len().saturating_sub(self.keep);
        self.carry = buf.split_off(emit);
        buf
    }

    /// The end of the stream: whatever was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.replace(rest)
    }

    fn replace(&self, mut buf: Vec<u8>) -> Vec<u8> {
        for n in &self.needles {
            if n.is_empty() || buf.len() < n.len() {
                continue;
            }
            let mut out = Vec::with_capacity(buf.len());
            let mut i = 0;
            while i < buf.len() {
                if buf[i..].starts_with(n) {
                    out.extend_from_slice(SCRUBBED.as_bytes());
                    i += n.len();
                } else {
                    out.push(buf[i]);
                    i += 1;
                }
            }
            buf = out;
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One;
    impl SecretSource for One {
        fn get(&self, name: &str) -> Option<Secret> {
            (name == "token").then(|| Secret::new("s3cr3t"))
        }
    }

    #[test]
    fn expansion() {
        assert_eq!(
            expand("Bearer {{secret:token}}", &One).unwrap().expose(),
            "Bearer s3cr3t"
        );
        assert_eq!(expand("plain", &One).unwrap().expose(), "plain");
        assert!(
            expand("{{secret:other}}", &One)
                .unwrap_err()
                .contains("`other`")
        );
        assert_eq!(format!("{:?}", Secret::new("x")), "[secret]");
    }

    #[test]
    fn scrubbing_finds_values_across_chunk_boundaries() {
        let s = Scrubber::new(&[Secret::new("s3cr3t-token"), Secret::new("ab")]);
        let mut text = "got s3cr3t-token and ab".to_string();
        assert!(s.string(&mut text));
        assert_eq!(text, "got [SECRET] and ab", "short values are left");
        let body = b"{\"echo\": \"Bearer s3cr3t-token\", \"n\": 1}";
        for split in 0..body.len() {
            let mut st = s.stream();
            let mut out = st.push(&body[..split]);
            out.extend(st.push(&body[split..]));
            out.extend(st.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "{\"echo\": \"Bearer [SECRET]\", \"n\": 1}",
                "split at {split}"
            );
        }
        let mut v = serde_json::json!({"s3cr3t-token": ["x s3cr3t-token"]});
        s.json(&mut v);
        assert_eq!(v, serde_json::json!({"[SECRET]": ["x [SECRET]"]}));
    }
}
