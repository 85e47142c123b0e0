#![allow(clippy::unwrap_used, clippy::print_stderr)]
//! The drill report page in a real browser: Debian's `chromium`, headless, renders the page made
//! from a recorded drill report (tests/fixtures/drill_report.json, from a 1 s silent drill of the
//! daemon's dataplane_smoke test), with no network and no console error. Checked in the rendered
//! DOM: the timeline SVG is there, laid out (a probe script in a test-only copy of the page
//! measures the gap's box), and the gap element's `data-gap-ms` equals the report's
//! `traffic_gap_ms`. A screenshot is kept at `target/tmp/drill-report/drill.png` (CI artifact).
//!
//! Without chromium the test is skipped, loudly, unless `CI` is set: then it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHROMIUM: &str = "chromium";
/// A page that does not load in this long is a failure, not a hang of the test run.
const TIMEOUT_SECS: &str = "60";

fn chromium_present() -> bool {
    Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Headless chromium with no network side-traffic, a throwaway profile and console logging on
/// stderr, loading `page`, with `extra` arguments (`--dump-dom` or `--screenshot=…`).
fn chromium(profile: &Path, page: &Path, extra: &[String]) -> Output {
    let out = Command::new("timeout")
        .arg(TIMEOUT_SECS)
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Console messages and uncaught exceptions, from chromium's stderr log (chromium 156 writes
/// `[…:INFO:CONSOLE:1] "Uncaught ReferenceError: …", source: file://… (1)`).
fn console_errors(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains("Uncaught") || l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-report");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_report_renders_in_chromium_with_the_gap_annotated() {
    if !chromium_present() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `{CHROMIUM}` is not installed (apt-get install chromium)"
        );
        eprintln!(
            "SKIPPED: the drill report browser test needs `{CHROMIUM}` (apt-get install chromium)"
        );
        return;
    }
    let report: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/drill_report.json")).unwrap();
    let gap = report["traffic_gap_ms"].as_f64().unwrap();
    let html = tandem_admin::render_drill_html(&report);

    let dir = artifacts();
    let page = dir.join("drill.html");
    std::fs::write(&page, &html).unwrap();
    // A test-only copy with a script that marks the body once the SVG and the gap have a laid-out
    // box: proof of rendering, not only of parsing. The shipped page has no script.
    let probe = dir.join("drill-probe.html");
    let script = "<script>\nconst svg = document.getElementById('timeline');\n\
        const gap = document.getElementById('gap');\n\
        const box = gap && gap.getBoundingClientRect();\n\
        if (svg && svg.getBoundingClientRect().width > 0 && box && box.width > 0) {\n\
          document.body.setAttribute('data-rendered', box.width.toFixed(1));\n}\n</script>\n";
    std::fs::write(&probe, html.replace("</body>", &format!("{script}</body>"))).unwrap();
    let profile = tempfile::tempdir().unwrap();

    let out = chromium(profile.path(), &probe, &["--dump-dom".to_owned()]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<svg id=\"timeline\""),
        "no SVG in the DOM:\n{dom}"
    );
    assert!(
        dom.contains("data-rendered=\""),
        "the SVG or the gap has no laid-out box:\n{dom}"
    );
    let attr = "id=\"gap\" data-gap-ms=\"";
    let at = dom
        .find(attr)
        .unwrap_or_else(|| panic!("no gap element:\n{dom}"))
        + attr.len();
    let shown: f64 = dom[at..at + dom[at..].find('"').unwrap()]
        .parse()
        .expect("data-gap-ms is a number");
    assert_eq!(shown, gap, "the annotated gap is not the report's figure");
    let errors = console_errors(&out.stderr);
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    let png = dir.join("drill.png");
    let _ = std::fs::remove_file(&png);
    let out = chromium(
        profile.path(),
        &page,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,800".to_owned(),
        ],
    );
    let errors = console_errors(&out.stderr);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        png.display()
    );
    eprintln!("screenshot: {}", png.display());
}
