//! Console sessions: an API key exchanged for a signed, expiring cookie,
//! and the CSRF tokens of its forms.
//!
//! A session lives in no server's memory: the cookie names the key id, its
//! expiry and a random nonce, and carries an HMAC-SHA256 over them and the
//! stored key's hash, under a secret kept in the store's metadata
//! (`console.session_key`, created once with `meta_init`), so every replica
//! sharing the store accepts it. Each request re-reads the key from the
//! store: a revoked (or deleted) key's sessions end at once, everywhere.
//! Signing out removes the cookie; a copy of it stays valid until it
//! expires ([`SESSION_TTL_MS`]) unless the key is revoked.
//!
//! Forms carry a token derived from the session (or, for the sign-in form,
//! from a short-lived pre-session cookie), checked on every POST together
//! with the `Origin` header (see [`same_origin`]); cookies are `HttpOnly`,
//! `SameSite=Strict`, `Path=/console`, and `Secure` when the request came
//! over TLS (as the proxy in front says with `X-Forwarded-Proto: https`).

use crate::storage::ApiKeyRecord;
use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "toolhost_session";
/// The sign-in form's pre-session cookie.
pub const LOGIN_COOKIE: &str = "toolhost_login";
/// How long a session lasts: 8 hours.
pub const SESSION_TTL_MS: i64 = 8 * 3_600_000;
/// How long a sign-in form may be used: 10 minutes.
pub const LOGIN_TTL_MS: i64 = 600_000;
/// The store metadata key holding the signing secret (hex).
pub const SECRET_META_KEY: &str = "console.session_key";

/// What a valid session cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub key_id: String,
    pub expires_ms: i64,
    pub nonce: String,
}

/// Signs and checks sessions and form tokens.
pub struct Sessions {
    secret: [u8; 32],
}

fn random_hex(n: usize) -> String {
    use rand_core::RngCore;
    let mut bytes = vec![0u8; n];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A fresh secret, as stored (hex).
pub fn new_secret() -> String {
    random_hex(32)
}

impl Sessions {
    /// From the stored secret (64 hex digits).
    pub fn from_hex(stored: &str) -> crate::Result<Sessions> {
        let bytes = hex::decode(stored.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                crate::Error::corrupt(format!(
                    "the stored `{SECRET_META_KEY}` is not 32 bytes of hex"
                ))
            })?;
        Ok(Sessions { secret: bytes })
    }

    /// HMAC-SHA256 over a domain label and fields, each ended by a newline
    /// (fields never contain one).
    fn mac(&self, label: &str, fields: &[&str]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes a key of any length");
        mac.update(b"toolhost-console/v1\n");
        mac.update(label.as_bytes());
        for f in fields {
            mac.update(b"\n");
            mac.update(f.as_bytes());
        }
        mac
    }

    fn tag(&self, label: &str, fields: &[&str]) -> String {
        hex::encode(self.mac(label, fields).finalize().into_bytes())
    }

    /// Whether `presented` (hex) is the tag of `fields`, compared in
    /// constant time.
    fn verify(&self, label: &str, fields: &[&str], presented: &str) -> bool {
        match hex::decode(presented) {
            Ok(bytes) => self.mac(label, fields).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// A session cookie's value for `key`, valid until `now_ms +`
    /// [`SESSION_TTL_MS`].
    pub fn issue(&self, key: &ApiKeyRecord, now_ms: i64) -> String {
        let expires = (now_ms + SESSION_TTL_MS).to_string();
        let nonce = random_hex(16);
        let tag = self.tag("session", &[&key.id, &expires, &nonce, &key.hash]);
        format!("v1.{}.{expires}.{nonce}.{tag}", key.id)
    }

    /// What a cookie value claims, if it has the shape of one (not yet
    /// checked: see [`Sessions::check`]).
    pub fn parse(value: &str) -> Option<Claims> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(id), Some(expires), Some(nonce), Some(_tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hexish(id, 16) || !hexish(nonce, 32) {
            return None;
        }
        Some(Claims {
            key_id: id.to_string(),
            expires_ms: expires.parse().ok()?,
            nonce: nonce.to_string(),
        })
    }

    /// Whether the cookie `value` is a session this secret signed for
    /// `key` (as stored now: a key whose hash changed does not match), not
    /// expired at `now_ms`. Revocation is the caller's check.
    pub fn check(&self, value: &str, key: &ApiKeyRecord, now_ms: i64) -> Option<Claims> {
        let claims = Sessions::parse(value)?;
        let tag = value.rsplit('.').next()?;
        let expires = claims.expires_ms.to_string();
        let genuine = key.id == claims.key_id
            && self.verify(
                "session",
                &[&key.id, &expires, &claims.nonce, &key.hash],
                tag,
            );
        (genuine && now_ms < claims.expires_ms).then_some(claims)
    }

    /// The CSRF token of a session's forms.
    pub fn csrf(&self, claims: &Claims) -> String {
        self.tag("csrf", &[&claims.key_id, &claims.nonce])
    }

    /// Whether `presented` is the session's CSRF token.
    pub fn check_csrf(&self, claims: &Claims, presented: &str) -> bool {
        self.verify("csrf", &[&claims.key_id, &claims.nonce], presented)
    }

    /// A sign-in form: the pre-session cookie's value and the form's token.
    pub fn login_form(&self, now_ms: i64) -> (String, String) {
        let nonce = random_hex(16);
        let cookie = format!("{nonce}.{}", now_ms + LOGIN_TTL_MS);
        let token = self.tag("login", &[&cookie]);
        (cookie, token)
    }

    /// Whether a sign-in form's token matches its pre-session cookie, and
    /// the form has not expired.
    pub fn check_login(&self, cookie: &str, token: &str, now_ms: i64) -> bool {
        let fresh = cookie
            .split_once('.')
            .and_then(|(_, exp)| exp.parse::<i64>().ok())
            .is_some_and(|exp| now_ms < exp);
        fresh && self.verify("login", &[cookie], token)
    }
}

/// The values of cookie `name` in the request (a client may send several;
/// the first [`MAX_SAME_NAME`] count).
pub fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then_some(v.trim())
        })
        .take(MAX_SAME_NAME)
}

/// Cookies of one name looked at, at most (each may cost a key lookup).
pub const MAX_SAME_NAME: usize = 4;

/// Whether the request came over TLS: the proxy in front of the server
/// says so (`X-Forwarded-Proto: https`). Cookies are then `Secure`.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/console`,
/// `Secure` over TLS; `max_age_s` 0 removes it.
pub fn set_cookie(name: &str, value: &str, max_age_s: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether a form post comes from this server's own pages: its `Origin`
/// (sent by browsers with every POST) names the host the request was sent
/// to (`Host`, or the `X-Forwarded-Host` a proxy in front sets: a
/// cross-site form cannot set either); without an `Origin`, a
/// `Sec-Fetch-Site` header must say `same-origin`. A client that sends
/// neither (not a browser) still needs the form's token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .collect();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        return match authority {
            Some(a) => !a.contains('/') && hosts.iter().any(|h| a.eq_ignore_ascii_case(h)),
            None => false,
        };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin",
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(id: &str, hash: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            tenant: "acme".into(),
            roles: vec!["approve".into()],
            hash: hash.into(),
            label: None,
            created_ms: 0,
            revoked_ms: None,
        }
    }

    fn sessions() -> Sessions {
        Sessions::from_hex(&new_secret()).unwrap()
    }

    #[test]
    fn a_session_is_bound_to_its_key_its_secret_and_its_expiry() {
        let s = sessions();
        let k = key("00112233445566aa", "h1");
        let cookie = s.issue(&k, 1000);
        let claims = s.check(&cookie, &k, 2000).expect("valid");
        assert_eq!(k.id, claims.key_id);
        // Expired.
        assert!(s.check(&cookie, &k, 1000 + SESSION_TTL_MS).is_none());
        // Another secret (another deployment) did not sign it.
        assert!(sessions().check(&cookie, &k, 2000).is_none());
        // The key's stored hash changed.
        assert!(s.check(&cookie, &key(&k.id, "h2"), 2000).is_none());
        // Another key id.
        assert!(
            s.check(&cookie, &key("00112233445566ab", "h1"), 2000)
                .is_none()
        );
        // Tampered: a later expiry, a changed tag.
        let later = cookie.replacen(
            &(1000 + SESSION_TTL_MS).to_string(),
            &(1000 + 10 * SESSION_TTL_MS).to_string(),
            1,
        );
        assert_ne!(later, cookie);
        assert!(s.check(&later, &k, 2000).is_none());
        let mut flipped = cookie.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert!(s.check(&flipped, &k, 2000).is_none());
        for junk in [
            "",
            "v1",
            "v1.....",
            "v2.00112233445566aa.1.2.3",
            "a.b.c.d.e.f",
        ] {
            assert!(s.check(junk, &k, 2000).is_none(), "{junk}");
        }
    }

    #[test]
    fn form_tokens_belong_to_their_session() {
        let s = sessions();
        let k = key("00112233445566aa", "h1");
        let a = Sessions::parse(&s.issue(&k, 0)).unwrap();
        let b = Sessions::parse(&s.issue(&k, 0)).unwrap();
        assert!(s.check_csrf(&a, &s.csrf(&a)));
        assert!(!s.check_csrf(&a, &s.csrf(&b)), "another session's token");
        assert!(!s.check_csrf(&a, ""));
        assert!(!s.check_csrf(&a, "zz"));
        let (cookie, token) = s.login_form(0);
        assert!(s.check_login(&cookie, &token, 1));
        assert!(!s.check_login(&cookie, &token, LOGIN_TTL_MS), "expired");
        let (other, _) = s.login_form(0);
        assert!(!s.check_login(&other, &token, 1));
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            same_origin(&h),
            "no Origin, no fetch metadata: not a browser"
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        // Behind a proxy that names the public host.
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://console.example.com"),
        );
        assert!(!same_origin(&h));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("console.example.com"),
        );
        assert!(same_origin(&h));
        h.remove("x-forwarded-host");
        for bad in [
            "null",
            "http://evil.example",
            "http://127.0.0.1:8081",
            "http://127.0.0.1:8080/x",
        ] {
            h.insert(header::ORIGIN, HeaderValue::from_static(bad));
            assert!(!same_origin(&h), "{bad}");
        }
        let mut h2 = HeaderMap::new();
        h2.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; toolhost_session=x; b=2"),
        );
        h2.append(
            header::COOKIE,
            HeaderValue::from_static("toolhost_session=y"),
        );
        assert_eq!(cookies(&h2, SESSION_COOKIE).collect::<Vec<_>>(), ["x", "y"]);
    }
}
