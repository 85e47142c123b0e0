#![allow(clippy::unwrap_used)]
//! `timers = "fast"`: the profile's DPD timers, explicit keys overriding them, and the floor on
//! `dpd_interval` refused with its position and its reason.

use std::time::Duration;

use tandem_config::{MIN_DPD_INTERVAL, MemoryKeyFiles, TimerProfile, parse_str};

const K1: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn keys() -> MemoryKeyFiles {
    let mut k = MemoryKeyFiles::new();
    k.insert("private.key", K1);
    k.insert("t1.psk", K1);
    k
}

/// A minimal config with `extra` lines in its `[[connection]]` (from line 8 on).
fn with(extra: &str) -> String {
    format!(
        r#"[gateway]
private_key_file = "private.key"

[[connection]]
name = "prod"
peer_public_key = "{K1}"
local_subnets = ["10.10.0.0/24"]
remote_subnets = ["10.20.0.0/16"]
{extra}
[[connection.tunnel]]
name = "t1"
remote = "192.0.2.2:4500"
psk_file = "t1.psk"
"#
    )
}

fn timers(extra: &str) -> (TimerProfile, Duration, Duration) {
    let c = parse_str("c.toml", &with(extra), &keys()).unwrap();
    let c = &c.connections[0];
    (c.timers, c.dpd_interval, c.dpd_timeout)
}

fn errors(extra: &str) -> String {
    parse_str("c.toml", &with(extra), &keys())
        .unwrap_err()
        .to_string()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_fast_profile_sets_ten_and_thirty_milliseconds() {
    assert_eq!(
        timers("timers = \"fast\"\n"),
        (TimerProfile::Fast, ms(10), ms(30))
    );
    assert_eq!(timers(""), (TimerProfile::Default, ms(250), ms(1000)));
    assert_eq!(
        timers("timers = \"default\"\n"),
        (TimerProfile::Default, ms(250), ms(1000))
    );
}

#[test]
fn explicit_dpd_keys_override_the_profile_one_by_one() {
    assert_eq!(
        timers("timers = \"fast\"\ndpd_timeout = \"50ms\"\n"),
        (TimerProfile::Fast, ms(10), ms(50))
    );
    assert_eq!(
        timers("timers = \"fast\"\ndpd_interval = \"20ms\"\ndpd_timeout = \"60ms\"\n"),
        (TimerProfile::Fast, ms(20), ms(60))
    );
    // The timeout rule is judged on the resolved pair: fast's 30 ms timeout against a 40 ms
    // interval is refused, at the value the operator wrote.
    let e = errors("timers = \"fast\"\ndpd_interval = \"40ms\"\n");
    assert!(
        e.contains("c.toml:10:16: connection[0].dpd_interval: dpd_timeout (30ms) must be greater than dpd_interval (40ms)"),
        "{e}"
    );
}

#[test]
fn an_interval_below_the_floor_is_refused_at_its_position_with_the_reason() {
    assert_eq!(MIN_DPD_INTERVAL, ms(5));
    for value in ["4ms", "1ms", "0s"] {
        let e = errors(&format!(
            "dpd_interval = \"{value}\"\ndpd_timeout = \"30ms\"\n"
        ));
        assert!(
            e.contains(&format!(
                "c.toml:9:16: connection[0].dpd_interval: dpd_interval \"{value}\" is too short: at least 5ms (keepalives go out twice per interval"
            )),
            "{value}: {e}"
        );
        assert!(e.contains("a late one looks like a dead path"), "{e}");
    }
    // The floor itself is accepted.
    assert_eq!(
        timers("dpd_interval = \"5ms\"\ndpd_timeout = \"15ms\"\n"),
        (TimerProfile::Default, ms(5), ms(15))
    );
}

#[test]
fn an_unknown_profile_is_refused_at_its_position() {
    let e = errors("timers = \"turbo\"\n");
    assert!(
        e.contains("c.toml:9:10: connection[0].timers: unknown timers profile \"turbo\": expected \"default\" or \"fast\""),
        "{e}"
    );
}
