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
}
