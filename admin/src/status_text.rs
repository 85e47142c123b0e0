//! `tandem status` for people: the `--json` document laid out as a table, with human units
//! (bytes in KiB/MiB/GiB, rates in bit/s, durations like `3m12s` or `250ms`), colours when the
//! caller says so, and the frames of `tandem status --watch`.
//!
//! Everything here is a pure function of its inputs (the status document, the previous sample,
//! the wall-clock time, whether to colour): the CLI decides those and prints the result, the
//! tests render fixed inputs. `--json` never comes through here: it prints the daemon's document
//! with its exact numbers.
//!
//! Colour is SGR escape codes only (no cursor movement); the watch frame adds cursor movement
//! only when it redraws a terminal ([`Frame::Redraw`]). Colours are wanted when stdout is a
//! terminal, `NO_COLOR` is unset or empty (<https://no-color.org>) and `TERM` is not `dumb`:
//! [`colour_wanted`].

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// SGR colour codes of the table (ECMA-48 "select graphic rendition").
mod sgr {
    pub const RESET: &str = "\x1b[0m";
    pub const BOLD: &str = "\x1b[1m";
    pub const RED: &str = "\x1b[1;31m";
    pub const GREEN: &str = "\x1b[32m";
    pub const YELLOW: &str = "\x1b[33m";
    pub const BLUE: &str = "\x1b[34m";
    pub const DIM: &str = "\x1b[2m";
}

/// Cursor control of a redrawn watch frame (ECMA-48): home, erase to the end of the line, erase
/// to the end of the screen, and erase the whole screen (before the first frame).
mod cursor {
    pub const HOME: &str = "\x1b[H";
    pub const ERASE_LINE_END: &str = "\x1b[K";
    pub const ERASE_BELOW: &str = "\x1b[J";
    pub const ERASE_SCREEN: &str = "\x1b[2J";
}

/// Whether to colour: stdout is a terminal, `NO_COLOR` is absent or empty, `TERM` is not `dumb`.
/// The environment is passed in so that the rule is testable.
pub fn colour_wanted(
    stdout_is_terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    term: Option<&std::ffi::OsStr>,
) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
}

/// How to render one status document.
#[derive(Debug, Clone, Copy, Default)]
pub struct View<'a> {
    /// Colour the states, the active tunnel and the failovers (SGR codes).
    pub colour: bool,
    /// Wall-clock now, Unix seconds: handshake ages are shown as `3m12s ago`. `None` shows the
    /// Unix time as it is.
    pub now_unix: Option<u64>,
    /// Show the RX/s and TX/s columns (the watch view).
    pub rates: bool,
    /// The previous sample and the time between it and this one: the rates come from the
    /// counters' growth over that time. `None` (the first frame) shows `-`.
    pub previous: Option<(&'a Value, Duration)>,
}

/// `1023 B`, `1.00 KiB`, `45.6 MiB`, `512 GiB`: IEC units (powers of 1024), three significant
/// digits from 1 KiB up.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", three_digits(v), UNITS[unit])
}

/// A rate in bits per second with SI prefixes, as link speeds are given: `0 bit/s`,
/// `950 bit/s`, `12.3 kbit/s`, `1.25 Mbit/s`, `3.96 Gbit/s`.
pub fn human_rate(bytes_per_second: f64) -> String {
    const UNITS: [&str; 5] = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let mut v = (bytes_per_second * 8.0).max(0.0);
    if v < 1000.0 {
        return format!("{v:.0} bit/s");
    }
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{} {}", three_digits(v), UNITS[unit])
}

/// `850us`, `2.50ms`, `25.3ms`, `250ms`, `42s`, `1.5s`, `3m12s`, `1h05m`, `2d03h`: two or three
/// significant figures below a second, then the two largest units.
pub fn human_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        return format!("{us}us");
    }
    if us < 1_000_000 {
        let ms = us as f64 / 1000.0;
        return if ms < 10.0 {
            format!("{ms:.2}ms")
        } else if ms < 100.0 {
            format!("{ms:.1}ms")
        } else {
            format!("{ms:.0}ms")
        };
    }
    let s = d.as_secs();
    if s < 60 {
        return if d.subsec_millis() == 0 {
            format!("{s}s")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        };
    }
    let (m, h, days) = (s / 60, s / 3600, s / 86_400);
    if h == 0 {
        format!("{m}m{:02}s", s % 60)
    } else if days == 0 {
        format!("{h}h{:02}m", m % 60)
    } else {
        format!("{days}d{:02}h", h % 24)
    }
}

/// 1 <= v < 1024: two decimals below 10, one below 100, none above.
fn three_digits(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// One table cell: its text and the colour it gets when colours are on.
struct Cell {
    text: String,
    colour: Option<&'static str>,
    right: bool,
}

impl Cell {
    fn left(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            colour: None,
            right: false,
        }
    }
    fn right(text: impl Into<String>) -> Cell {
        Cell {
            right: true,
            ..Cell::left(text)
        }
    }
    fn painted(mut self, colour: Option<&'static str>) -> Cell {
        self.colour = colour;
        self
    }
}

/// Lays the rows out in columns as wide as their widest cell, two spaces apart, indented by two.
/// Padding is computed on the text, so colour codes never shift a column.
fn table(out: &mut String, rows: &[Vec<Cell>], colour: bool) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.text.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            line.push(' ');
            let pad = " ".repeat(width.saturating_sub(cell.text.chars().count()));
            let text = paint(&cell.text, cell.colour, colour);
            if cell.right {
                line.push_str(&pad);
                line.push_str(&text);
            } else {
                line.push_str(&text);
                line.push_str(&pad);
            }
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn paint(text: &str, code: Option<&str>, colour: bool) -> String {
    match code {
        Some(code) if colour => format!("{code}{text}{}", sgr::RESET),
        _ => text.to_owned(),
    }
}

fn str_of<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// A field as the JSON has it, `-` when absent or null.
fn raw(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn state_colour(state: &str) -> Option<&'static str> {
    match state {
        "up" => Some(sgr::GREEN),
        "down" => Some(sgr::RED),
        "connecting" => Some(sgr::YELLOW),
        "admin-down" => Some(sgr::BLUE),
        _ => None,
    }
}

/// `0xdeadbeef`, as `ip xfrm state` shows SPIs.
fn spi(v: &Value, key: &str) -> String {
    u64_of(v, key).map_or_else(|| raw(v, key), |n| format!("{n:#010x}"))
}

fn handshake(t: &Value, now_unix: Option<u64>) -> String {
    match (u64_of(t, "last_handshake_unix"), now_unix) {
        (Some(at), Some(now)) => format!(
            "{} ago",
            human_duration(Duration::from_secs(now.saturating_sub(at)))
        ),
        (Some(at), None) => format!("@{at}"),
        (None, _) => raw(t, "last_handshake_unix"),
    }
}

fn traffic(t: &Value, bytes: &str, packets: &str) -> String {
    let b = u64_of(t, bytes).map_or_else(|| raw(t, bytes), human_bytes);
    format!("{b} / {} pkt", raw(t, packets))
}

fn rtt(t: &Value) -> String {
    match t.get("rtt_ms").and_then(Value::as_f64) {
        Some(ms) if ms.is_finite() && ms >= 0.0 => {
            human_duration(Duration::from_secs_f64(ms.min(1e9) / 1000.0))
        }
        _ => raw(t, "rtt_ms"),
    }
}

/// The same tunnel in the previous sample (by connection and tunnel name).
fn previous_tunnel<'p>(prev: &'p Value, connection: &str, tunnel: &str) -> Option<&'p Value> {
    prev.get("connections")?
        .as_array()?
        .iter()
        .find(|c| str_of(c, "name") == Some(connection))?
        .get("tunnels")?
        .as_array()?
        .iter()
        .find(|t| str_of(t, "name") == Some(tunnel))
}

/// Bytes per second of `key` between the previous sample and this one; `-` without a previous
/// sample or when the counter went backwards (the daemon restarted, the tunnel was re-created).
fn rate(t: &Value, prev: Option<(&Value, Duration)>, key: &str) -> String {
    let Some((prev, elapsed)) = prev else {
        return "-".to_owned();
    };
    match (u64_of(t, key), u64_of(prev, key)) {
        (Some(now), Some(before)) if now >= before && !elapsed.is_zero() => {
            human_rate((now - before) as f64 / elapsed.as_secs_f64())
        }
        _ => "-".to_owned(),
    }
}

/// The human status table of `tandem status` (the `--json` document laid out for a terminal).
pub fn render_status_view(status: &Value, view: &View<'_>) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let conns = status
        .get("connections")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if conns.is_empty() {
        out.push_str("no connections\n");
    }
    for (i, c) in conns.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let name = raw(c, "name");
        let active = match str_of(c, "active_tunnel") {
            Some(a) => paint(a, Some(sgr::GREEN), view.colour),
            None => paint("none", Some(sgr::RED), view.colour),
        };
        let pinned = if c.get("pinned").and_then(Value::as_bool) == Some(true) {
            format!(" {}", paint("(pinned)", Some(sgr::YELLOW), view.colour))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "connection {}  mode {}  active {active}{pinned}",
            paint(&name, Some(sgr::BOLD), view.colour),
            raw(c, "mode"),
        );
        let mut header = vec![
            Cell::left("TUNNEL"),
            Cell::left("STATE"),
            Cell::left("LOCAL"),
            Cell::left("REMOTE"),
            Cell::left("SPI-IN"),
            Cell::left("SPI-OUT"),
            Cell::left("HANDSHAKE"),
            Cell::right("RX"),
            Cell::right("TX"),
        ];
        if view.rates {
            header.extend([Cell::right("RX/s"), Cell::right("TX/s")]);
        }
        header.extend([Cell::right("RTT"), Cell::right("FAILOVERS")]);
        let tunnels = c.get("tunnels").and_then(Value::as_array).unwrap_or(&empty);
        // Route-based connections (docs/configuration.md): each tunnel's interface and carrier.
        let with_iface = tunnels
            .iter()
            .any(|t| t.get("ifname").is_some_and(|n| !n.is_null()));
        if with_iface {
            header.extend([Cell::left("IFNAME"), Cell::left("CARRIER")]);
        }
        let header = header
            .into_iter()
            .map(|h| h.painted(Some(sgr::DIM)))
            .collect();
        let mut rows = vec![header];
        for t in tunnels {
            let tunnel = raw(t, "name");
            let state = raw(t, "state");
            let is_active = str_of(c, "active_tunnel") == Some(tunnel.as_str());
            let prev = view.previous.and_then(|(p, elapsed)| {
                previous_tunnel(p, &name, &tunnel).map(|pt| (pt, elapsed))
            });
            let failovers = raw(t, "failovers");
            let mut row = vec![
                Cell::left(format!("{}{tunnel}", if is_active { "*" } else { " " }))
                    .painted(is_active.then_some(sgr::BOLD)),
                Cell::left(state.clone()).painted(state_colour(&state)),
                Cell::left(raw(t, "local")),
                Cell::left(raw(t, "remote")),
                Cell::left(spi(t, "spi_in")),
                Cell::left(spi(t, "spi_out")),
                Cell::left(handshake(t, view.now_unix)),
                Cell::right(traffic(t, "rx_bytes", "rx_packets")),
                Cell::right(traffic(t, "tx_bytes", "tx_packets")),
            ];
            if view.rates {
                row.extend([
                    Cell::right(rate(t, prev, "rx_bytes")),
                    Cell::right(rate(t, prev, "tx_bytes")),
                ]);
            }
            row.extend([
                Cell::right(rtt(t)),
                Cell::right(failovers.clone())
                    .painted((failovers != "0" && failovers != "-").then_some(sgr::YELLOW)),
            ]);
            if with_iface {
                let carrier = match t.get("carrier").and_then(Value::as_bool) {
                    Some(true) => Cell::left("on").painted(Some(sgr::GREEN)),
                    Some(false) => Cell::left("off").painted(Some(sgr::RED)),
                    None => Cell::left("-"),
                };
                row.extend([Cell::left(raw(t, "ifname")), carrier]);
            }
            rows.push(row);
        }
        table(&mut out, &rows, view.colour);
    }
    out
}

/// The status table with no colour, no ages, no rates (the fuzz target's and old callers' form).
pub fn render_status(status: &Value) -> String {
    render_status_view(status, &View::default())
}

/// How a watch frame reaches the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A terminal: the first frame clears the screen, each frame redraws from the top left
    /// (erasing what the previous one left), like `watch`.
    Redraw {
        /// The first frame (clear the whole screen first).
        first: bool,
    },
    /// A pipe or file: frames one after the other, a blank line apart, no escape codes.
    Append,
}

/// `HH:MM:SS UTC` of a Unix time.
pub fn utc_clock(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// One frame of `tandem status --watch`: a title line (interval, socket, time), a blank line,
/// and `body` (a rendered table, or an error line).
pub fn watch_frame(title: &str, body: &str, frame: Frame) -> String {
    let mut out = String::new();
    match frame {
        Frame::Redraw { first } => {
            if first {
                out.push_str(cursor::ERASE_SCREEN);
            }
            out.push_str(cursor::HOME);
            for line in std::iter::once(title).chain([""]).chain(body.lines()) {
                out.push_str(line);
                out.push_str(cursor::ERASE_LINE_END);
                out.push('\n');
            }
            out.push_str(cursor::ERASE_BELOW);
        }
        Frame::Append => {
            let _ = write!(out, "{title}\n\n{body}");
            if !body.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
        }
    }
    out
}

/// The title line of a watch frame.
pub fn watch_title(interval: Duration, socket: &str, now_unix: u64, colour: bool) -> String {
    paint(
        &format!(
            "Every {}: tandem status --socket {socket}    {}",
            human_duration(interval),
            utc_clock(now_unix)
        ),
        Some(sgr::DIM),
        colour,
    )
}

/// An error in a watch frame (the daemon went away; the watch keeps trying).
pub fn watch_error(message: &str, colour: bool) -> String {
    format!("{}\n", paint(message, Some(sgr::RED), colour))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn bytes_are_shown_in_iec_units_with_three_significant_digits() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (1536, "1.50 KiB"),
            (123_456, "121 KiB"),
            (47_815_475, "45.6 MiB"),
            (4 << 30, "4.00 GiB"),
            (5 << 40, "5.00 TiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }

    #[test]
    fn rates_are_shown_in_bits_per_second_with_si_prefixes() {
        let cases = [
            (0.0, "0 bit/s"),
            (100.0, "800 bit/s"),
            (1_540.0, "12.3 kbit/s"),
            (156_250.0, "1.25 Mbit/s"),
            (495e6, "3.96 Gbit/s"),
            (-5.0, "0 bit/s"),
        ];
        for (bps, want) in cases {
            assert_eq!(human_rate(bps), want, "{bps}");
        }
    }

    #[test]
    fn durations_use_the_two_largest_units() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases = [
            (Duration::from_micros(850), "850us"),
            (Duration::from_micros(2_500), "2.50ms"),
            (Duration::from_micros(25_300), "25.3ms"),
            (ms(250), "250ms"),
            (s(42), "42s"),
            (ms(1_500), "1.5s"),
            (s(192), "3m12s"),
            (s(3_900), "1h05m"),
            (s(2 * 86_400 + 3 * 3600 + 59), "2d03h"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color_or_a_dumb_term() {
        let xterm = Some(OsStr::new("xterm-256color"));
        assert!(colour_wanted(true, None, xterm));
        assert!(colour_wanted(true, Some(OsStr::new("")), xterm));
        assert!(colour_wanted(true, None, None));
        assert!(!colour_wanted(false, None, xterm));
        assert!(!colour_wanted(true, Some(OsStr::new("1")), xterm));
        assert!(!colour_wanted(true, None, Some(OsStr::new("dumb"))));
    }

    #[test]
    fn the_clock_is_utc_hours_minutes_seconds() {
        assert_eq!(utc_clock(1_767_225_600 + 3600 + 62), "01:01:02 UTC");
    }
}
