//! The drill report as a picture: one self-contained HTML page (inline CSS and SVG, no script,
//! nothing fetched) made from the daemon's drill report JSON (docs/cli.md, "Drill").
//!
//! Layout, top to bottom: the figures table; the timeline SVG (probe stream per bucket of send
//! time, answered in green and lost in red; one lane per tunnel coloured by its state; the active
//! tunnel's lane; vertical marks at the silence, the switch, the restore and the failback; the
//! longest gap shaded over the probe stream as the element `id="gap"` whose `data-gap-ms` is the
//! report's `traffic_gap_ms`, verbatim); the settings table. A report without a `timeline` (an
//! older daemon) gets the tables and a note instead of the picture.

use std::fmt::Write as _;

use serde_json::Value;

/// SVG width in user units; the page scales it to the window.
const WIDTH: f64 = 1100.0;
/// Left margin: room for the lane labels.
const LEFT: f64 = 130.0;
/// Right margin.
const RIGHT: f64 = 20.0;
/// Top margin: room for the labels of the vertical marks.
const TOP: f64 = 34.0;
/// Height of the probe-stream chart.
const PROBE_HEIGHT: f64 = 120.0;
/// Height of one tunnel lane, and the space between lanes.
const LANE: f64 = 22.0;
const LANE_GAP: f64 = 8.0;
/// Room a mark's label takes ("restored 12000.1 ms" at 11 px); closer marks alternate rows.
const MARK_LABEL_WIDTH: f64 = 120.0;
/// Narrowest segment that gets a text label.
const LABEL_MIN_WIDTH: f64 = 48.0;

const CSS: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2329; background: #fff; }
h1 { font-size: 20px; margin: 0 0 12px; }
h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 3px 14px 3px 0; border-bottom: 1px solid #e3e6ea; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
svg { width: 100%; max-width: 1100px; height: auto; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: #1d2329; }
.rx { fill: #2f9e44; } .lost { fill: #e03131; }
.st-up { fill: #2f9e44; } .st-connecting { fill: #f2a900; } .st-down { fill: #e03131; }
.st-admin-down { fill: #868e96; } .st-other { fill: #adb5bd; }
.act-0 { fill: #1c7ed6; } .act-1 { fill: #ae3ec9; } .act-2 { fill: #0ca678; } .act-3 { fill: #f76707; }
.act-none { fill: #dee2e6; }
.seg-label { fill: #fff; font-weight: 600; }
.mark { stroke: #343a40; stroke-width: 1; stroke-dasharray: 4 3; }
.gap { fill: #ffd43b; fill-opacity: 0.35; stroke: #f08c00; stroke-width: 1; }
.gap-label { font-weight: 700; fill: #fff; }
.axis { stroke: #868e96; stroke-width: 1; }
.note { color: #868e96; }
";

/// Escape text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => escape_html(s),
        Some(other) => escape_html(&other.to_string()),
    }
}

/// A millisecond figure for people: `1130 ms`, `0.4 ms`, or `-`.
fn ms_text(v: &Value, key: &str) -> String {
    match num(v, key) {
        Some(ms) => format!("{} ms", trim(ms)),
        None => "-".to_owned(),
    }
}

fn trim(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Class for a tunnel state: only the known states, so a name can't inject a class.
fn state_class(state: &str) -> &'static str {
    match state {
        "up" => "st-up",
        "connecting" => "st-connecting",
        "down" => "st-down",
        "admin-down" => "st-admin-down",
        _ => "st-other",
    }
}

/// The drill report as one self-contained HTML page.
pub fn render_drill_html(report: &Value) -> String {
    let mut out = String::new();
    let conn = text(report, "connection");
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>tandem drill on {conn}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <h1>tandem drill on {conn}</h1>\n"
    );
    figures(&mut out, report);
    out.push_str("<h2>Timeline</h2>\n");
    match report.get("timeline").filter(|t| t.is_object()) {
        Some(tl) => timeline(&mut out, report, tl),
        None => out.push_str(
            "<p class=\"note\">This report has no timeline (the daemon that ran the drill \
             predates it).</p>\n",
        ),
    }
    settings(&mut out, report);
    out.push_str("</body>\n</html>\n");
    out
}

fn figures(out: &mut String, r: &Value) {
    let lost = format!("{} of {}", text(r, "probes_lost"), text(r, "probes_sent"));
    let rows = [
        (
            "detection time",
            ms_text(r, "detection_ms"),
            "figure-detection",
        ),
        ("switched to", text(r, "failover_to"), "figure-switched-to"),
        ("traffic gap", ms_text(r, "traffic_gap_ms"), "figure-gap"),
        ("probes lost", lost, "figure-lost"),
        (
            "failback time",
            ms_text(r, "failback_ms"),
            "figure-failback",
        ),
    ];
    out.push_str("<h2>Figures</h2>\n<table id=\"figures\">\n");
    for (label, value, id) in rows {
        let _ = writeln!(
            out,
            "<tr><th>{label}</th><td class=\"num\" id=\"{id}\">{value}</td></tr>"
        );
    }
    out.push_str("</table>\n");
}

fn settings(out: &mut String, r: &Value) {
    let s = r.get("settings").cloned().unwrap_or(Value::Null);
    let mode = if r.get("graceful").and_then(Value::as_bool) == Some(true) {
        "graceful (closing notice)"
    } else {
        "silent (dead path)"
    };
    let bucket = r
        .get("timeline")
        .map(|t| ms_text(t, "bucket_ms"))
        .unwrap_or_else(|| "-".to_owned());
    let hold = match s.get("failback_hold_ms") {
        Some(Value::Null) => "never".to_owned(),
        _ => ms_text(&s, "failback_hold_ms"),
    };
    let rows = [
        ("connection", text(r, "connection")),
        ("silenced tunnel", text(r, "silenced_tunnel")),
        ("mode", mode.to_owned()),
        ("silence duration", ms_text(r, "duration_ms")),
        ("probe interval", ms_text(&s, "probe_interval_ms")),
        ("warm-up before the silence", ms_text(&s, "warmup_ms")),
        ("failback hold-down", hold),
        ("failback grace", ms_text(&s, "failback_grace_ms")),
        ("drain after the last probe", ms_text(&s, "drain_ms")),
        ("timeline bucket", bucket),
    ];
    out.push_str("<h2>Settings</h2>\n<table id=\"settings\">\n");
    for (label, value) in rows {
        let _ = writeln!(out, "<tr><th>{label}</th><td>{value}</td></tr>");
    }
    out.push_str("</table>\n");
}

fn timeline(out: &mut String, r: &Value, tl: &Value) {
    let empty = Vec::new();
    let arr = |k: &str| tl.get(k).and_then(Value::as_array).unwrap_or(&empty);
    let bucket_ms = num(tl, "bucket_ms").unwrap_or(1.0).max(1.0);
    let probes: Vec<(u64, u64)> = arr("probes")
        .iter()
        .map(|p| {
            let at = |i: usize| p.get(i).and_then(Value::as_u64).unwrap_or(0);
            (at(0), at(1).min(at(0)))
        })
        .collect();
    let end = num(tl, "end_ms")
        .unwrap_or(0.0)
        .max(probes.len() as f64 * bucket_ms)
        .max(1.0);
    let tunnels: Vec<String> = arr("tunnels")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |ms: f64| LEFT + (ms.clamp(0.0, end) / end) * plot_w;
    let lanes_top = TOP + PROBE_HEIGHT + 2.0 * LANE_GAP;
    let lane_y = |i: usize| lanes_top + i as f64 * (LANE + LANE_GAP);
    let active_y = lane_y(tunnels.len());
    let axis_y = active_y + LANE + LANE_GAP;
    let height = axis_y + 34.0;

    let _ = writeln!(
        out,
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height:.0}\" \
         role=\"img\" aria-labelledby=\"timeline-title\">\n<title id=\"timeline-title\">Probe stream, \
         tunnel states and active tunnel during the drill on {}</title>",
        text(r, "connection")
    );

    // Probe stream: runs of equal buckets merged into one rect each. A full bar is the probes a
    // bucket should hold (bucket / probe interval); a bucket that got more (the loop caught up
    // after a late wake-up) is a full bar too, split by its own answered fraction.
    let interval = r
        .get("settings")
        .and_then(|s| num(s, "probe_interval_ms"))
        .filter(|i| *i > 0.0)
        .unwrap_or(1.0);
    let per_bucket = (bucket_ms / interval).max(1.0);
    let base = TOP + PROBE_HEIGHT;
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\">probes</text>\n<text x=\"{:.1}\" y=\"{:.1}\" class=\"note\">\
         per {} ms</text>",
        8.0,
        TOP + 14.0,
        8.0,
        TOP + 28.0,
        trim(bucket_ms)
    );
    out.push_str("<g id=\"probes\">\n");
    let mut i = 0;
    while i < probes.len() {
        let mut j = i + 1;
        while j < probes.len() && probes[j] == probes[i] {
            j += 1;
        }
        let (sent, rx) = probes[i];
        if sent > 0 {
            let (x0, x1) = (x(i as f64 * bucket_ms), x(j as f64 * bucket_ms));
            let full = per_bucket.max(sent as f64);
            let h_rx = rx as f64 / full * PROBE_HEIGHT;
            let h_lost = (sent - rx) as f64 / full * PROBE_HEIGHT;
            if rx > 0 {
                let _ = writeln!(
                    out,
                    "<rect class=\"rx\" x=\"{x0:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h_rx:.2}\"/>",
                    base - h_rx,
                    x1 - x0
                );
            }
            if sent > rx {
                let _ = writeln!(
                    out,
                    "<rect class=\"lost\" x=\"{x0:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h_lost:.2}\"/>",
                    base - h_rx - h_lost,
                    x1 - x0
                );
            }
        }
        i = j;
    }
    out.push_str("</g>\n");

    // The gap, over the probe stream.
    if let (Some(from), Some(to)) = (num(tl, "gap_from_ms"), num(tl, "gap_to_ms")) {
        let gap = r.get("traffic_gap_ms").cloned().unwrap_or(Value::Null);
        let (x0, x1) = (x(from), x(to));
        let _ = writeln!(
            out,
            "<g id=\"gap\" data-gap-ms=\"{}\" data-from-ms=\"{from}\" data-to-ms=\"{to}\">\
             <rect class=\"gap\" x=\"{x0:.2}\" y=\"{TOP:.1}\" width=\"{:.2}\" height=\"{PROBE_HEIGHT:.1}\"/>\
             <text class=\"gap-label\" x=\"{:.2}\" y=\"{:.1}\" text-anchor=\"middle\">gap {}</text></g>",
            escape_html(&gap.to_string()),
            (x1 - x0).max(1.0),
            (x0 + x1) / 2.0,
            TOP + PROBE_HEIGHT / 2.0,
            ms_text(r, "traffic_gap_ms")
        );
    }

    // One lane per tunnel, coloured by state.
    let states = arr("tunnel_states");
    for (n, name) in tunnels.iter().enumerate() {
        let y = lane_y(n);
        let _ = writeln!(
            out,
            "<text x=\"8\" y=\"{:.1}\">{}</text>\n<g class=\"lane\" data-tunnel=\"{}\">",
            y + 15.0,
            escape_html(name),
            escape_html(name)
        );
        let changes: Vec<(f64, &str)> = states
            .iter()
            .filter(|s| s.get("tunnel").and_then(Value::as_str) == Some(name))
            .filter_map(|s| Some((num(s, "at_ms")?, s.get("state")?.as_str()?)))
            .collect();
        for (k, (at, state)) in changes.iter().enumerate() {
            let next = changes.get(k + 1).map_or(end, |c| c.0);
            segment(out, x(*at), x(next), y, state_class(state), state);
        }
        out.push_str("</g>\n");
    }

    // The active tunnel.
    let _ = writeln!(
        out,
        "<text x=\"8\" y=\"{:.1}\">active tunnel</text>\n<g id=\"active\">",
        active_y + 15.0
    );
    let active: Vec<(f64, Option<&str>)> = arr("active")
        .iter()
        .filter_map(|a| Some((num(a, "at_ms")?, a.get("tunnel").and_then(Value::as_str))))
        .collect();
    for (k, (at, name)) in active.iter().enumerate() {
        let next = active.get(k + 1).map_or(end, |c| c.0);
        let (class, label) = match name {
            Some(n) => {
                let idx = tunnels.iter().position(|t| t == n).unwrap_or(0) % 4;
                (format!("act-{idx}"), *n)
            }
            None => ("act-none".to_owned(), "none"),
        };
        segment(out, x(*at), x(next), active_y, &class, label);
    }
    out.push_str("</g>\n");

    // Marks at the phase instants, across the whole picture.
    let marks = [
        ("silenced_at_ms", "silenced", "mark-silenced"),
        ("switched_at_ms", "switch", "mark-switch"),
        ("restored_at_ms", "restored", "mark-restored"),
        ("failback_at_ms", "failback", "mark-failback"),
    ];
    let mut last_label_x = f64::NEG_INFINITY;
    let mut row = 0;
    for (key, label, id) in marks {
        let Some(at) = num(tl, key) else { continue };
        let mx = x(at);
        // Two rows of labels, so that close marks (silence and switch in a graceful drill) don't overlap.
        row = if mx - last_label_x < MARK_LABEL_WIDTH {
            1 - row
        } else {
            0
        };
        last_label_x = mx;
        let _ = writeln!(
            out,
            "<g id=\"{id}\" data-at-ms=\"{at}\"><line class=\"mark\" x1=\"{mx:.2}\" y1=\"{:.1}\" \
             x2=\"{mx:.2}\" y2=\"{axis_y:.1}\"/><text x=\"{mx:.2}\" y=\"{:.1}\" text-anchor=\"middle\">\
             {label} {} ms</text></g>",
            TOP - 20.0 + 12.0 * f64::from(row),
            TOP - 22.0 + 12.0 * f64::from(row),
            trim(at)
        );
    }

    // Time axis.
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\"/>",
        WIDTH - RIGHT
    );
    let step = tick_step(end);
    let mut t = 0.0;
    while t <= end + 0.5 {
        let tx = x(t);
        let label = if step >= 1000.0 {
            format!("{} s", trim(t / 1000.0))
        } else {
            format!("{} ms", trim(t))
        };
        let _ = writeln!(
            out,
            "<line class=\"axis\" x1=\"{tx:.2}\" y1=\"{axis_y:.1}\" x2=\"{tx:.2}\" y2=\"{:.1}\"/>\
             <text x=\"{tx:.2}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            axis_y + 5.0,
            axis_y + 18.0
        );
        t += step;
    }
    out.push_str("</svg>\n");
    out.push_str(
        "<p class=\"note\">Probes by send time: green answered, red lost. Lanes: tunnel state \
         (green up, amber connecting, red down, grey admin-down) and the active tunnel. Time from \
         the start of the drill.</p>\n",
    );
}

/// A lane segment with its label when it fits.
fn segment(out: &mut String, x0: f64, x1: f64, y: f64, class: &str, label: &str) {
    let w = (x1 - x0).max(0.0);
    let _ = write!(
        out,
        "<rect class=\"{class}\" x=\"{x0:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" height=\"{LANE:.1}\"/>"
    );
    if w >= LABEL_MIN_WIDTH {
        let _ = write!(
            out,
            "<text class=\"seg-label\" x=\"{:.2}\" y=\"{:.1}\">{}</text>",
            x0 + 4.0,
            y + 15.0,
            escape_html(label)
        );
    }
    out.push('\n');
}

/// Tick spacing: 1, 2 or 5 times a power of ten, for about 10 ticks.
fn tick_step(end: f64) -> f64 {
    let raw = end / 10.0;
    let pow = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow)
        .max(1.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report() -> Value {
        serde_json::from_str(include_str!("../tests/fixtures/drill_report.json")).unwrap()
    }

    /// Every `<tag` opened is closed (or self-closing), in order: enough to catch a broken page.
    fn assert_balanced(html: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').expect("unclosed tag");
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') {
                continue;
            }
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if ["meta", "br"].contains(&name.as_str()) || tag.ends_with('/') {
                continue;
            }
            if tag.starts_with('/') {
                assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "at <{tag}>");
            } else {
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "left open: {stack:?}");
    }

    #[test]
    fn the_page_is_well_formed_and_self_contained() {
        let html = render_drill_html(&report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_balanced(&html);
        assert!(!html.contains("<script"), "no scripts");
        // The one URL is the SVG namespace, which is a name, not a fetch.
        assert_eq!(html.matches("http").count(), 1);
        assert!(html.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    }

    #[test]
    fn the_gap_element_carries_the_reports_gap_figure() {
        let r = report();
        let html = render_drill_html(&r);
        let gap = r["traffic_gap_ms"].to_string();
        assert!(
            html.contains(&format!("id=\"gap\" data-gap-ms=\"{gap}\"")),
            "{gap} not in the gap element"
        );
    }

    #[test]
    fn the_figures_and_settings_are_in_the_page() {
        let r = report();
        let html = render_drill_html(&r);
        let lost = format!("{} of {}", r["probes_lost"], r["probes_sent"]);
        assert!(html.contains(&lost), "{lost}");
        for key in ["detection_ms", "failback_ms", "traffic_gap_ms"] {
            let v = format!("{} ms", trim(r[key].as_f64().unwrap()));
            assert!(html.contains(&v), "{key}: {v}");
        }
        assert!(html.contains(r["failover_to"].as_str().unwrap()));
        assert!(html.contains(&format!("{} ms", r["duration_ms"])));
        assert!(html.contains("id=\"mark-switch\""));
        assert!(html.contains("id=\"mark-failback\""));
        assert!(html.contains("class=\"lost\""), "lost probes drawn");
    }

    #[test]
    fn names_are_escaped() {
        let mut r = report();
        r["connection"] = Value::from("<b>\"x\" & 'y'</b>");
        r["timeline"]["tunnels"][0] = Value::from("t<1>");
        let html = render_drill_html(&r);
        assert!(html.contains("&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"));
        assert!(!html.contains("<b>"));
        assert!(html.contains("t&lt;1&gt;"));
        assert_balanced(&html);
    }

    #[test]
    fn a_report_without_a_timeline_still_renders_its_figures() {
        let mut r = report();
        r.as_object_mut().unwrap().remove("timeline");
        let html = render_drill_html(&r);
        assert_balanced(&html);
        assert!(html.contains("has no timeline"));
        assert!(!html.contains("<svg"));
        assert!(html.contains("id=\"figure-gap\""));
    }

    #[test]
    fn long_drills_get_ticks_in_seconds() {
        assert_eq!(tick_step(14_000.0), 2000.0);
        assert_eq!(tick_step(1_500.0), 200.0);
        assert_eq!(tick_step(3.0), 1.0);
    }
}
