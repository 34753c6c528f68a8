//! `shmbus-plot BENCH.json OUT_DIR`: draws the results of `shmbus bench
//! --json` as two SVG charts, `throughput.svg` (messages per second by body
//! size, one bar per transport, log scale) and `latency.svg` (one-way p50,
//! p99 and p99.9 per transport and size, log scale). No plotting library:
//! the charts are plain SVG text.

use serde_json::Value;
use std::fmt::Write;

const W: f64 = 900.0;
const H: f64 = 460.0;
const LEFT: f64 = 80.0;
const BOTTOM: f64 = 90.0;
const TOP: f64 = 50.0;
const COLORS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: shmbus-plot BENCH.json OUT_DIR");
        std::process::exit(2);
    }
    let data: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&args[1])?)?;
    let out = std::path::Path::new(&args[2]);
    std::fs::write(out.join("throughput.svg"), throughput(&data))?;
    std::fs::write(out.join("latency.svg"), latency(&data))?;
    eprintln!("wrote {} and {}", out.join("throughput.svg").display(), out.join("latency.svg").display());
    Ok(())
}

fn label(m: &Value) -> String {
    let t = m["transport"].as_str().unwrap_or("?");
    match (t, m["batch"].as_u64().unwrap_or(1), m["touch"].as_str(), m["wait"].as_str()) {
        ("shmbus", b, _, _) if b > 1 => format!("shmbus batch {b}"),
        ("shmbus", _, Some("header"), _) => "shmbus header".into(),
        ("shmbus", _, Some("full"), _) => "shmbus full body".into(),
        ("shmbus", _, _, Some(w)) => format!("shmbus {w}"),
        (t, ..) => t.into(),
    }
}

/// Log-scale y: value → pixel.
fn y_of(v: f64, lo: f64, hi: f64) -> f64 {
    let f = (v.max(lo).ln() - lo.ln()) / (hi.ln() - lo.ln());
    H - BOTTOM - f * (H - BOTTOM - TOP)
}

fn frame(svg: &mut String, title: &str, fmt: fn(f64) -> String, lo: f64, hi: f64) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">{title}</text>
"#,
        W / 2.0
    );
    let mut v = 10f64.powf(lo.log10().floor());
    while v <= hi * 1.0001 {
        let y = y_of(v, lo, hi);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - 20.0,
            LEFT - 6.0,
            y + 4.0,
            fmt(v)
        );
        v *= 10.0;
    }
    let _ = writeln!(svg, r#"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="black"/>"#, H - BOTTOM);
}

fn rate(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.0}M msg/s", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k msg/s", v / 1e3),
        v => format!("{v:.0} msg/s"),
    }
}

fn nanos(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.0} ms", v / 1e6),
        v if v >= 1e3 => format!("{:.0} µs", v / 1e3),
        v => format!("{v:.0} ns"),
    }
}

fn legend(svg: &mut String, names: &[String], y: f64) {
    for (i, n) in names.iter().enumerate() {
        let x = LEFT + 10.0 + (i as f64) * 135.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}">{n}</text>"#,
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 16.0
        );
    }
}

fn throughput(data: &[Value]) -> String {
    let ms: Vec<&Value> =
        data.iter().filter(|m| m["kind"] == "throughput" && m["publishers"].as_u64() == Some(1)).collect();
    let mut sizes: Vec<u64> = ms.iter().filter_map(|m| m["body_bytes"].as_u64()).collect();
    sizes.sort();
    sizes.dedup();
    let mut names: Vec<String> = ms.iter().map(|m| label(m)).collect();
    names.dedup();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let hand = ms.iter().filter_map(|m| m["handoff_ns"].as_f64()).sum::<f64>() / ms.len().max(1) as f64;
    let (lo, hi) = (1e5, 1e8);
    let mut svg = String::new();
    frame(
        &mut svg,
        &format!("Throughput, 1 publisher process → 1 subscriber process (cache-line hand-off ≈ {hand:.0} ns)"),
        rate,
        lo,
        hi,
    );
    let group = (W - LEFT - 40.0) / sizes.len().max(1) as f64;
    let bar = (group - 30.0) / names.len().max(1) as f64;
    for (si, size) in sizes.iter().enumerate() {
        let gx = LEFT + 20.0 + si as f64 * group;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{size} B body</text>"#,
            gx + (group - 30.0) / 2.0,
            H - BOTTOM + 18.0
        );
        for (ni, name) in names.iter().enumerate() {
            let Some(m) = ms.iter().find(|m| m["body_bytes"].as_u64() == Some(*size) && label(m) == *name) else {
                continue;
            };
            let v = m["msgs_per_sec"].as_f64().unwrap_or(0.0);
            let (x, y) = (gx + ni as f64 * bar, y_of(v, lo, hi));
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{name}, {size} B: {:.2} M msg/s</title></rect>"#,
                bar - 2.0,
                H - BOTTOM - y,
                COLORS[ni % COLORS.len()],
                v / 1e6
            );
        }
    }
    legend(&mut svg, &names, H - 25.0);
    svg.push_str("</svg>\n");
    svg
}

fn latency(data: &[Value]) -> String {
    let ms: Vec<&Value> = data.iter().filter(|m| m["kind"] == "latency").collect();
    let (lo, hi) = (1e2, 1e6);
    let hand = ms.iter().filter_map(|m| m["handoff_ns"].as_f64()).sum::<f64>() / ms.len().max(1) as f64;
    let mut svg = String::new();
    frame(
        &mut svg,
        &format!("One-way latency (round trip / 2): p50, p99, p99.9 (cache-line hand-off ≈ {hand:.0} ns)"),
        nanos,
        lo,
        hi,
    );
    let slot = (W - LEFT - 40.0) / ms.len().max(1) as f64;
    let pcts = ["p50_ns", "p99_ns", "p999_ns"];
    for (i, m) in ms.iter().enumerate() {
        let x0 = LEFT + 10.0 + i as f64 * slot;
        let name = format!("{} {} B", label(m), m["body_bytes"]);
        let _ = writeln!(
            svg,
            r#"<text transform="translate({:.1},{}) rotate(35)" font-size="10">{name}</text>"#,
            x0 + 4.0,
            H - BOTTOM + 12.0
        );
        for (pi, p) in pcts.iter().enumerate() {
            let v = m[*p].as_f64().unwrap_or(0.0);
            let y = y_of(v, lo, hi);
            let w = (slot - 8.0) / 3.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{name} {p}: {v} ns</title></rect>"#,
                x0 + pi as f64 * w,
                w - 1.0,
                H - BOTTOM - y,
                COLORS[pi]
            );
        }
    }
    legend(&mut svg, &["p50".into(), "p99".into(), "p99.9".into()], TOP + 4.0);
    svg.push_str("</svg>\n");
    svg
}
