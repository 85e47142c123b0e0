//! Golden tests of the human `tandem status` renderers (`admin/src/status_text.rs`): fixed status
//! documents (`fixtures/status_before.json`, and the same gateway two seconds later in
//! `status_after.json`) rendered as `tandem status`, as a `--watch` frame with rates, and in
//! colour; each compared with a committed file in `golden/`. Route-based tunnels add their
//! interface and carrier columns.
//!
//! After an intended change of the layout, regenerate and review the diff:
//!
//! ```sh
//! TANDEM_BLESS=1 cargo test -p tandem-admin --test status_render
//! ```
//!
//! Blessing is refused when `CI` is set.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tandem_admin::{Frame, View, render_status, render_status_view, watch_frame, watch_title};

/// The fixtures' "now": 10 minutes after tunnel1's handshake, 3m12s after tunnel2's.
const NOW: u64 = 1_767_225_600;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("fixtures").join(name)).unwrap())
        .unwrap()
}

fn golden(name: &str, got: &str) {
    let path = dir().join("golden").join(name);
    if std::env::var_os("TANDEM_BLESS").is_some() {
        assert!(
            std::env::var_os("CI").is_none(),
            "refusing to bless goldens under CI"
        );
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TANDEM_BLESS=1 writes it)", path.display()));
    assert_eq!(
        got, want,
        "{name} differs from the golden file; if intended: TANDEM_BLESS=1 cargo test -p tandem-admin --test status_render"
    );
}

/// Whether `text` has an SGR colour sequence (`ESC [ digits;... m`).
fn has_sgr(text: &str) -> bool {
    text.match_indices("\x1b[").any(|(i, _)| {
        let rest = &text[i + 2..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == ';'));
        end.is_some_and(|e| rest[e..].starts_with('m'))
    })
}

#[test]
fn the_plain_table_has_human_units_and_no_escape_codes() {
    let view = View {
        now_unix: Some(NOW),
        ..View::default()
    };
    let got = render_status_view(&fixture("status_before.json"), &view);
    assert!(!got.contains('\x1b'), "escape codes without colour:\n{got}");
    for want in [
        "4.00 GiB / 3100000 pkt",
        "121 KiB",
        "3m12s ago",
        "10m00s ago",
        "250us",
        "0xdeadbeef",
    ] {
        assert!(got.contains(want), "no {want:?} in\n{got}");
    }
    golden("status.txt", &got);
}

#[test]
fn a_watch_frame_shows_rates_from_the_previous_sample() {
    let before = fixture("status_before.json");
    let after = fixture("status_after.json");
    let view = View {
        now_unix: Some(NOW + 2),
        rates: true,
        previous: Some((&before, Duration::from_secs(2))),
        ..View::default()
    };
    let body = render_status_view(&after, &view);
    // tunnel2: 5,000,000 B in 2 s = 20 Mbit/s in, 250,000 B = 1 Mbit/s out; tunnel1's counters
    // went back to almost 0 (re-created): no rate, not a huge one.
    let row = |name: &str| {
        body.lines()
            .find(|l| l.trim_start().trim_start_matches('*').starts_with(name))
            .unwrap()
    };
    let tunnel2 = row("tunnel2");
    assert!(
        tunnel2.contains("20.0 Mbit/s") && tunnel2.contains("1.00 Mbit/s"),
        "{tunnel2}"
    );
    let tunnel1 = row("tunnel1");
    assert!(!tunnel1.contains("bit/s"), "{tunnel1}");
    let title = watch_title(
        Duration::from_secs(1),
        "/run/tandem/control.sock",
        NOW + 2,
        false,
    );
    let piped = watch_frame(&title, &body, Frame::Append);
    assert!(
        !piped.contains('\x1b'),
        "escape codes in a piped frame:\n{piped}"
    );
    golden("watch-frame.txt", &piped);
}

#[test]
fn colours_mark_states_and_the_active_tunnel_and_never_shift_a_column() {
    let doc = fixture("status_before.json");
    let plain = render_status_view(
        &doc,
        &View {
            now_unix: Some(NOW),
            ..View::default()
        },
    );
    let coloured = render_status_view(
        &doc,
        &View {
            colour: true,
            now_unix: Some(NOW),
            ..View::default()
        },
    );
    assert!(has_sgr(&coloured));
    assert!(coloured.contains("\x1b[32mup\x1b[0m"), "up is not green");
    assert!(
        coloured.contains("\x1b[1;31mdown\x1b[0m"),
        "down is not red"
    );
    assert!(
        coloured.contains("\x1b[33mconnecting\x1b[0m"),
        "connecting is not yellow"
    );
    assert!(
        coloured.contains("active \x1b[32mtunnel2\x1b[0m"),
        "the active tunnel is not green"
    );
    assert!(
        coloured.contains("active \x1b[1;31mnone\x1b[0m"),
        "no active tunnel is not red"
    );
    // Without its escape codes the coloured table is the plain one, column for column.
    let mut stripped = String::new();
    let mut rest = coloured.as_str();
    while let Some(i) = rest.find("\x1b[") {
        stripped.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let m = after.find('m').unwrap();
        rest = &after[m + 1..];
    }
    stripped.push_str(rest);
    assert_eq!(stripped, plain);
    golden("status-colour.txt", &coloured);
}

#[test]
fn a_terminal_frame_redraws_from_the_top_and_erases_what_is_left() {
    let first = watch_frame("title", "a\nb\n", Frame::Redraw { first: true });
    assert_eq!(
        first,
        "\x1b[2J\x1b[Htitle\x1b[K\n\x1b[K\na\x1b[K\nb\x1b[K\n\x1b[J"
    );
    let next = watch_frame("title", "a\n", Frame::Redraw { first: false });
    assert!(next.starts_with("\x1b[Htitle") && next.ends_with("\x1b[J"));
    assert!(!has_sgr(&next), "cursor control is not colour");
}

#[test]
fn an_empty_or_odd_document_renders_without_panicking() {
    for doc in [
        serde_json::json!({}),
        serde_json::json!({"connections": []}),
        serde_json::json!({"connections": [{"tunnels": [{"rtt_ms": -1, "rx_bytes": "x"}]}]}),
        serde_json::json!({"connections": [{"tunnels": [{"rtt_ms": 1e300, "last_handshake_unix": 5}]}]}),
    ] {
        let prev = serde_json::json!({"connections": [{"tunnels": [{"rx_bytes": 9}]}]});
        let view = View {
            colour: true,
            now_unix: Some(0),
            rates: true,
            previous: Some((&prev, Duration::ZERO)),
        };
        let _ = render_status_view(&doc, &view);
    }
}

// Route-based connections: each tunnel's interface and carrier.

fn doc(tunnels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"connections": [{"name": "aws-vpc", "mode": "active-standby",
        "active_tunnel": "tunnel1", "pinned": false, "tunnels": tunnels}]})
}

fn tunnel(name: &str, ifname: Option<&str>, carrier: Option<bool>) -> serde_json::Value {
    serde_json::json!({"name": name, "state": "up", "local": null, "remote": null,
        "spi_in": 256, "spi_out": 257, "last_handshake_unix": 1, "rx_bytes": 0, "tx_bytes": 0,
        "rx_packets": 0, "tx_packets": 0, "rtt_ms": null, "failovers": 0,
        "ifname": ifname, "carrier": carrier})
}

#[test]
fn route_based_tunnels_show_their_interface_and_carrier() {
    let out = render_status(&doc(serde_json::json!([
        tunnel("tunnel1", Some("aws-t1"), Some(true)),
        tunnel("tunnel2", Some("aws-t2"), Some(false)),
    ])));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].contains("IFNAME") && lines[1].contains("CARRIER"),
        "{out}"
    );
    // The last two columns, whatever their widths.
    let last_two = |line: &str| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        cells[cells.len() - 2..].join(" ")
    };
    assert!(
        lines[2].contains("tunnel1") && last_two(lines[2]) == "aws-t1 on",
        "{out}"
    );
    assert!(
        lines[3].contains("tunnel2") && last_two(lines[3]) == "aws-t2 off",
        "{out}"
    );
}

#[test]
fn static_tunnels_have_no_interface_columns() {
    let out = render_status(&doc(serde_json::json!([tunnel("tunnel1", None, None)])));
    assert!(!out.contains("IFNAME") && !out.contains("CARRIER"), "{out}");
    assert!(
        out.lines().nth(2).unwrap().trim_end().ends_with('0'),
        "{out}"
    );
}
