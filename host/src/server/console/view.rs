//! The console's layout and formatting helpers. Everything shown goes
//! through maud's escaping (`(value)`); nothing here emits `PreEscaped`
//! text from data.

use super::{PAGES, Session, may};
use crate::error::Error;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

/// A full page for a signed-in key: navigation by what the key may see,
/// who is signed in, sign-out.
pub fn page(session: &Session, title: &str, current: &str, body: Markup) -> Response {
    let key = &session.caller.key;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Toolhost console" }
                link rel="stylesheet" href="/console/assets/console.css";
                link rel="icon" type="image/svg+xml" href="/console/assets/favicon.svg";
            }
            body {
                header.top {
                    a.brand href="/console/" { "Toolhost" }
                    nav {
                        @for (href, label, mirror) in PAGES {
                            @if may(&session.caller, *mirror) {
                                a href=(href) class=[(*href == current).then_some("current")] { (label) }
                            }
                        }
                    }
                    div.who {
                        span.key title="API key id" { (key.label.as_deref().unwrap_or(&key.id)) }
                        " · tenant " strong { (key.tenant) }
                        " · " span.roles { (key.roles.join(", ")) }
                        form.inline method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page without a session (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Toolhost console" }
                link rel="stylesheet" href="/console/assets/console.css";
                link rel="icon" type="image/svg+xml" href="/console/assets/favicon.svg";
            }
            body.bare {
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error, as a page.
pub fn error_page(status: StatusCode, error: &Error) -> Html<String> {
    let title = status.canonical_reason().unwrap_or("Error");
    Html(
        bare(
            title,
            html! {
                p.error { (error.message) }
                p.muted { "kind: " code { (error.kind.as_str()) } }
                p { a href="/console/" { "Back to the console" } }
            },
        )
        .into_string(),
    )
}

/// Redirect (303) to the sign-in form.
pub fn to_login() -> Response {
    see_other("/console/login")
}

/// A 303 redirect to `to` (a console path).
pub fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// A hidden CSRF field.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// Unix ms as RFC 3339 UTC.
pub fn time(ms: i64) -> String {
    crate::stats::format_time(ms)
}

/// How long ago (or, negative, from now) `ms` is.
pub fn ago(ms: i64, now: i64) -> String {
    let d = now - ms;
    let (abs, future) = if d < 0 { (-d, true) } else { (d, false) };
    let text = match abs {
        a if a < 60_000 => format!("{} s", a / 1000),
        a if a < 3_600_000 => format!("{} min", a / 60_000),
        a if a < 172_800_000 => format!("{} h", a / 3_600_000),
        a => format!("{} d", a / 86_400_000),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Micro-USD as dollars.
pub fn usd(micro: i64) -> String {
    if micro == 0 {
        "$0".into()
    } else if micro.abs() < 10_000 {
        format!("${:.6}", micro as f64 / 1e6)
    } else {
        format!("${:.2}", micro as f64 / 1e6)
    }
}

/// A ratio as a percentage.
pub fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

/// JSON, pretty, for a `<pre>` (escaped by the caller's markup).
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A value's text (strings without quotes).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Percent-encode a query or path component (everything but unreserved
/// characters).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from the non-empty pairs (`?a=1&b=2`, or empty).
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{}={}", enc(k), enc(v)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A status as a badge.
pub fn status(s: &str) -> Markup {
    let class = match s {
        "ok" | "approved" => "badge ok",
        "error" | "refused" | "denied" => "badge bad",
        "expired" => "badge muted",
        _ => "badge wait",
    };
    html! { span class=(class) { (s) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_formatting() {
        assert_eq!(enc("a b&c=<d>/é"), "a%20b%26c%3D%3Cd%3E%2F%C3%A9");
        assert_eq!(
            query(&[("tool", Some("x y")), ("status", None), ("k", Some(""))]),
            "?tool=x%20y"
        );
        assert_eq!(query(&[]), "");
        assert_eq!(ago(0, 90_000), "1 min ago");
        assert_eq!(ago(90_000, 0), "in 1 min");
        assert_eq!(usd(1_234_567), "$1.23");
        assert_eq!(usd(5), "$0.000005");
        assert_eq!(pct(0.125), "12.5%");
    }

    #[test]
    fn markup_escapes_what_it_shows() {
        let hostile = "<script>alert(1)</script>\"'&";
        let m = html! { p title=(hostile) { (hostile) } pre { (pretty(&serde_json::json!({"x": hostile}))) } };
        let s = m.into_string();
        assert!(!s.contains("<script>"), "{s}");
        assert!(s.contains("&lt;script&gt;"), "{s}");
        assert!(!s.contains("\"'&\""), "{s}");
    }
}
