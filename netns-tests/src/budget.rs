//! Figures of `lab budget` (the false-failover budget of the timer profiles): percentiles and the
//! SVG histogram of detection times and traffic gaps, one panel per profile.

use std::fmt::Write as _;

/// `(min, median, p99, max)` of `v` (nearest rank), `None` when empty.
pub fn spread(v: &[f64]) -> Option<(f64, f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    Some((s[0], at(0.5), at(0.99), s[s.len() - 1]))
}

/// One profile's samples for the histogram.
#[derive(Debug, Clone, Copy)]
pub struct Panel<'a> {
    /// Profile name and timers, e.g. `fast (10 / 30 ms)`.
    pub title: &'a str,
    /// Detection times (cut -> switch), ms.
    pub detection_ms: &'a [f64],
    /// Largest probe gaps, ms.
    pub gap_ms: &'a [f64],
}

/// Bins per panel.
const BINS: usize = 30;
const WIDTH: f64 = 720.0;
const PANEL_H: f64 = 150.0;
const LEFT: f64 = 50.0;
const PLOT_W: f64 = WIDTH - LEFT - 20.0;
const PLOT_H: f64 = 95.0;

/// Counts of `v` in `BINS` equal bins over `[lo, hi]`.
pub fn bin_counts(v: &[f64], lo: f64, hi: f64) -> [u32; BINS] {
    let mut c = [0u32; BINS];
    let w = ((hi - lo) / BINS as f64).max(f64::MIN_POSITIVE);
    for x in v {
        let i = (((x - lo) / w) as usize).min(BINS - 1);
        c[i] += 1;
    }
    c
}

/// The histogram: per profile a panel with the detection times (blue) and the probe stream's
/// largest gaps (orange) in the same ms bins, each bar's height its count. Each `<rect>` carries
/// `data-kind`, `data-profile` and `data-count`, so a test (or a reader) can check it against the
/// JSON.
pub fn histogram_svg(panels: &[Panel<'_>]) -> String {
    let h = PANEL_H * panels.len().max(1) as f64 + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"16\" font-size=\"13\">Detection time (blue) and largest probe gap (orange) per silent cut, ms</text>"
    );
    for (k, p) in panels.iter().enumerate() {
        let top = 30.0 + PANEL_H * k as f64;
        let all: Vec<f64> = p.detection_ms.iter().chain(p.gap_ms).copied().collect();
        let Some((lo, _, _, hi)) = spread(&all) else {
            let _ = writeln!(
                s,
                "<text x=\"{LEFT}\" y=\"{}\">{}: no cuts</text>",
                top + 20.0,
                esc(p.title)
            );
            continue;
        };
        let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
        let det = bin_counts(p.detection_ms, lo, hi);
        let gap = bin_counts(p.gap_ms, lo, hi);
        let peak = det
            .iter()
            .chain(gap.iter())
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        let base = top + 20.0 + PLOT_H;
        let bw = PLOT_W / BINS as f64;
        let fmt = |v: &[f64]| {
            spread(v).map_or("-".into(), |(a, b, c, d)| {
                format!("{a:.0} / {b:.0} / {c:.0} / {d:.0}")
            })
        };
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{}</text><text x=\"{}\" y=\"{}\">detection min/med/p99/max {} ms; gap {} ms; n = {}</text>",
            top + 12.0,
            esc(p.title),
            LEFT + 170.0,
            top + 12.0,
            fmt(p.detection_ms),
            fmt(p.gap_ms),
            p.detection_ms.len()
        );
        for (kind, counts, color, dx) in [
            ("detection", &det, "#3b6fb6", 0.0),
            ("gap", &gap, "#e8833a", bw / 2.0),
        ] {
            for (i, &c) in counts.iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let bh = PLOT_H * f64::from(c) / f64::from(peak);
                let _ = writeln!(
                    s,
                    "<rect data-kind=\"{kind}\" data-profile=\"{}\" data-count=\"{c}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"/>",
                    esc(p.title),
                    LEFT + bw * i as f64 + dx,
                    base - bh,
                    bw / 2.0,
                );
            }
        }
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
            LEFT + PLOT_W
        );
        for i in 0..=5 {
            let x = LEFT + PLOT_W * f64::from(i) / 5.0;
            let v = lo + (hi - lo) * f64::from(i) / 5.0;
            let _ = writeln!(
                s,
                "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{v:.0}</text>",
                base + 13.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{peak}</text>",
            LEFT - 4.0,
            base - PLOT_H + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_in_one_bar_of_its_kind_and_profile() {
        let det = [31.0, 33.5, 33.9, 38.0, 39.0];
        let gap = [35.0, 36.0, 41.0];
        let svg = histogram_svg(&[
            Panel {
                title: "fast",
                detection_ms: &det,
                gap_ms: &gap,
            },
            Panel {
                title: "default",
                detection_ms: &[],
                gap_ms: &[],
            },
        ]);
        let count = |kind: &str| -> u32 {
            svg.lines()
                .filter(|l| l.contains(&format!("data-kind=\"{kind}\"")))
                .filter_map(|l| {
                    l.split("data-count=\"")
                        .nth(1)?
                        .split('"')
                        .next()?
                        .parse::<u32>()
                        .ok()
                })
                .sum()
        };
        assert_eq!(count("detection"), 5, "{svg}");
        assert_eq!(count("gap"), 3, "{svg}");
        assert!(svg.contains("default: no cuts"), "{svg}");
        assert!(svg.contains("31 / 34 / 39 / 39"), "{svg}");
    }

    #[test]
    fn spread_is_min_median_p99_max() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(spread(&v), Some((1.0, 51.0, 99.0, 100.0)));
        assert_eq!(spread(&[]), None);
    }
}
