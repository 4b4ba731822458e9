//! Charts as server-rendered SVG (no script, no inline style: colours come
//! from the stylesheet's classes). Labels are escaped like any other text.

use crate::stats::Series;
use maud::{Markup, html};

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 44.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

fn n(v: f64) -> String {
    format!("{v:.1}")
}

/// Invocations per bucket (bars, left axis) and the failure rate (line,
/// right axis, 0–100%).
pub fn timeline(series: &Series) -> Markup {
    let buckets = &series.buckets;
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / buckets.len().max(1) as f64;
    let y_of = |v: f64| TOP + plot_h - v * plot_h;
    let points: Vec<String> = buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.count > 0)
        .map(|(i, b)| {
            let x = LEFT + slot * (i as f64 + 0.5);
            let rate = b.failures as f64 / b.count as f64;
            format!("{},{}", n(x), n(y_of(rate)))
        })
        .collect();
    let total: u64 = buckets.iter().map(|b| b.count).sum();
    let failed: u64 = buckets.iter().map(|b| b.failures).sum();
    let first = buckets.first().map_or(0, |b| b.start_ms);
    let last = buckets.last().map_or(0, |b| b.start_ms + series.bucket_ms);
    html! {
        svg.chart viewBox=(format!("0 0 {W} {H}")) role="img"
            aria-label=(format!("{total} invocations, {failed} failed, over time")) {
            title { "Invocations (bars) and failure rate (line) over time" }
            line.axis x1=(LEFT) y1=(n(TOP + plot_h)) x2=(n(W - RIGHT)) y2=(n(TOP + plot_h)) {}
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(n(TOP + plot_h)) {}
            line.axis x1=(n(W - RIGHT)) y1=(TOP) x2=(n(W - RIGHT)) y2=(n(TOP + plot_h)) {}
            text.label x=(LEFT - 4.0) y=(TOP + 8.0) text-anchor="end" { (max as u64) }
            text.label x=(LEFT - 4.0) y=(n(TOP + plot_h)) text-anchor="end" { "0" }
            text.label.fail x=(n(W - RIGHT + 4.0)) y=(TOP + 8.0) { "100%" }
            text.label.fail x=(n(W - RIGHT + 4.0)) y=(n(TOP + plot_h)) { "0%" }
            @for (i, b) in buckets.iter().enumerate() {
                @let h = b.count as f64 / max * plot_h;
                rect.bar x=(n(LEFT + slot * i as f64 + 1.0)) y=(n(TOP + plot_h - h))
                    width=(n((slot - 2.0).max(1.0))) height=(n(h)) {
                    title { (b.count) " invocations, " (b.failures) " failed, from " (crate::stats::format_time(b.start_ms)) }
                }
            }
            @if !points.is_empty() {
                polyline.fail-line points=(points.join(" ")) {}
            }
            @for p in &points {
                @let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                circle.fail-point cx=(x) cy=(y) r="3" {}
            }
            text.label x=(LEFT) y=(H - 8.0) { (crate::stats::format_time(first)) }
            text.label x=(n(W - RIGHT)) y=(H - 8.0) text-anchor="end" { (crate::stats::format_time(last)) }
        }
    }
}

/// Horizontal bars: one per (label, value), scaled to the largest.
pub fn hbars(rows: &[(String, i64)], unit: &str, caption: &str) -> Markup {
    let row_h = 22.0;
    let label_w = 240.0;
    let value_w = 90.0;
    let h = row_h * rows.len().max(1) as f64 + 8.0;
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    let bar_w = W - label_w - value_w;
    html! {
        svg.chart viewBox=(format!("0 0 {W} {}", n(h))) role="img" aria-label=(caption) {
            title { (caption) }
            @if rows.is_empty() {
                text.label x="8" y="18" { "no data in this range" }
            }
            @for (i, (label, value)) in rows.iter().enumerate() {
                @let y = 4.0 + row_h * i as f64;
                @let w = (*value as f64 / max * bar_w).max(1.0);
                text.label x=(n(label_w - 8.0)) y=(n(y + 15.0)) text-anchor="end" { (label) }
                rect.bar x=(n(label_w)) y=(n(y + 3.0)) width=(n(w)) height=(n(row_h - 6.0)) {
                    title { (label) ": " (value) " " (unit) }
                }
                text.label x=(n(label_w + w + 6.0)) y=(n(y + 15.0)) { (value) " " (unit) }
            }
        }
    }
}

/// Spend against a limit: used (solid) and reserved (hatched) as parts of
/// the limit; past it, the bar is marked over.
pub fn meter(used: i64, reserved: i64, limit: i64) -> Markup {
    let (w, h) = (160.0, 12.0);
    let lim = limit.max(1) as f64;
    let u = (used.max(0) as f64 / lim).min(1.0) * w;
    let r = (reserved.max(0) as f64 / lim).min(1.0 - u / w) * w;
    let over = used + reserved > limit;
    let class = if over { "meter over" } else { "meter" };
    html! {
        svg class=(class) viewBox=(format!("0 0 {w} {h}")) width=(w) height=(h) role="img"
            aria-label=(format!("{used} used, {reserved} reserved of {limit}")) {
            rect.track x="0" y="0" width=(w) height=(h) {}
            rect.used x="0" y="0" width=(n(u)) height=(h) {}
            rect.reserved x=(n(u)) y="0" width=(n(r)) height=(h) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Bucket;

    #[test]
    fn charts_escape_labels_and_scale() {
        let s = hbars(&[("<b>x</b>".into(), 10), ("y".into(), 5)], "ms", "p95").into_string();
        assert!(!s.contains("<b>"), "{s}");
        assert!(s.contains("&lt;b&gt;"));
        let series = Series {
            bucket_ms: 1000,
            buckets: vec![
                Bucket {
                    start_ms: 0,
                    count: 4,
                    failures: 1,
                },
                Bucket {
                    start_ms: 1000,
                    count: 0,
                    failures: 0,
                },
                Bucket {
                    start_ms: 2000,
                    count: 2,
                    failures: 2,
                },
            ],
        };
        let t = timeline(&series).into_string();
        assert_eq!(t.matches("<rect").count(), 3);
        // The line joins the buckets that had invocations: 25% and 100%.
        assert!(t.contains("polyline"), "{t}");
        let m = meter(150, 10, 100).into_string();
        assert!(m.contains("meter over"));
        assert!(!t.contains("style="), "no inline styles under the CSP");
    }
}
