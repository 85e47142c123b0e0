#![allow(clippy::unwrap_used)]
//! The parser on in-memory text: defaults, resolution of peer keys, positions of errors.

use std::time::Duration;

use tandem_config::{MemoryKeyFiles, Mode, parse_str};

const K1: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const K2: &str = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=";

fn keys() -> MemoryKeyFiles {
    let mut k = MemoryKeyFiles::new();
    k.insert("private.key", K1);
    k.insert("t1.psk", K1);
    k.insert("t2.psk", K2);
    k.insert("peer.pub", K2);
    k
}

fn minimal() -> String {
    format!(
        r#"[gateway]
private_key_file = "private.key"

[[connection]]
name = "prod"
peer_public_key = "{K1}"
local_subnets = ["10.10.0.0/24"]
remote_subnets = ["10.20.0.0/16"]

[[connection.tunnel]]
name = "t1"
remote = "192.0.2.2:4500"
psk_file = "t1.psk"

[[connection.tunnel]]
name = "t2"
remote = "198.51.100.2:4500"
psk_file = "t2.psk"
peer_public_key_file = "peer.pub"
"#
    )
}

fn errors(text: &str) -> String {
    parse_str("c.toml", text, &keys()).unwrap_err().to_string()
}

#[test]
fn a_minimal_config_gets_the_spec_defaults() {
    let c = parse_str("c.toml", &minimal(), &keys()).unwrap();
    assert_eq!(**c.gateway.private_key.as_ref().unwrap(), [7u8; 32]);
    assert_eq!(c.gateway.tun_name, "tandem0");
    assert_eq!(c.gateway.mtu, 1415);
    assert_eq!(c.control.socket.to_str(), Some("/run/tandem/control.sock"));
    assert_eq!(c.control.metrics_listen, None);
    let conn = &c.connections[0];
    assert_eq!(conn.mode, Mode::ActiveStandby);
    assert_eq!(conn.dpd_interval, Duration::from_millis(250));
    assert_eq!(conn.dpd_timeout, Duration::from_secs(1));
    assert_eq!(conn.rekey_after, Duration::from_secs(120));
    assert_eq!(conn.failback, Some(Duration::from_secs(10)));
    assert!(conn.mss_clamp);
    assert_eq!(conn.tunnels[0].priority, 1);
    assert_eq!(conn.tunnels[1].priority, 2);
    assert_eq!(conn.tunnels[0].local, None);
    assert_eq!(
        conn.tunnels[0].peer_public_key, [7u8; 32],
        "inherited from the connection"
    );
    assert_eq!(
        conn.tunnels[1].peer_public_key, [8u8; 32],
        "the tunnel's own key file"
    );
    assert_eq!(*conn.tunnels[1].psk, [8u8; 32]);
    assert_eq!(c.tunnel_count(), 2);
}

#[test]
fn failback_never_and_explicit_values_are_kept() {
    let text = minimal().replace(
        "local_subnets",
        "failback = \"never\"\nmode = \"active-active\"\ndpd_interval = \"100ms\"\ndpd_timeout = \"300ms\"\nmss_clamp = false\nrekey_after = \"1m30s\"\nlocal_subnets",
    );
    let c = parse_str("c.toml", &text, &keys()).unwrap();
    let conn = &c.connections[0];
    assert_eq!(conn.failback, None);
    assert_eq!(conn.mode, Mode::ActiveActive);
    assert_eq!(conn.dpd_interval, Duration::from_millis(100));
    assert_eq!(conn.dpd_timeout, Duration::from_millis(300));
    assert!(!conn.mss_clamp);
    assert_eq!(conn.rekey_after, Duration::from_secs(90));
}

#[test]
fn several_errors_are_reported_one_per_line_in_file_order() {
    let text = minimal()
        .replace("10.20.0.0/16", "10.20.0.1/16")
        .replace("name = \"t2\"", "name = \"t2\"\nprioritty = 3")
        .replace("[gateway]", "[gateway]\nmtu = 100");
    assert_eq!(
        errors(&text),
        "c.toml:2:7: gateway.mtu: MTU 100 is out of range 1280..=9000 (the default, 1415, fits a 1500-byte underlay)\n\
         c.toml:9:19: connection[0].remote_subnets[0]: \"10.20.0.1/16\" has host bits set: did you mean \"10.20.0.0/16\"?\n\
         c.toml:18:1: connection[0].tunnel[1].prioritty: unknown key (did you mean \"priority\"?)"
    );
}

#[test]
fn an_empty_connection_array_is_an_error_not_a_crash() {
    let text = "connection = []\n[gateway]\nprivate_key_file = \"private.key\"\n";
    assert_eq!(
        errors(text),
        "c.toml:1:14: connection: no [[connection]]: a gateway needs at least one connection"
    );
}

#[test]
fn an_implicit_priority_that_ties_points_at_the_tunnel_name() {
    let text = minimal().replace(
        "psk_file = \"t1.psk\"",
        "psk_file = \"t1.psk\"\npriority = 2",
    );
    assert_eq!(
        errors(&text),
        "c.toml:17:8: connection[0].tunnel[1].priority: priority 2 ties with tunnel \"t1\" (line 14): in active-standby mode priorities must differ"
    );
}

#[test]
fn active_active_allows_equal_priorities() {
    let text = minimal()
        .replace(
            "psk_file = \"t1.psk\"",
            "psk_file = \"t1.psk\"\npriority = 2",
        )
        .replace("local_subnets", "mode = \"active-active\"\nlocal_subnets");
    let c = parse_str("c.toml", &text, &keys()).unwrap();
    assert_eq!(
        c.connections[0].tunnels[0].priority,
        c.connections[0].tunnels[1].priority
    );
}

#[test]
fn ipv6_subnets_addresses_and_endpoints_are_accepted() {
    let text = minimal()
        .replace("[gateway]", "[gateway]\naddress = \"fd00::1/64\"")
        .replace("\"10.10.0.0/24\"", "\"10.10.0.0/24\", \"fd10::/48\"")
        .replace("\"10.20.0.0/16\"", "\"fd20::/48\"")
        .replace(
            "\"192.0.2.2:4500\"",
            "\"[2001:db8::2]:4500\"\nlocal = \"[2001:db8::1]:4500\"",
        );
    let c = parse_str("c.toml", &text, &keys()).unwrap();
    assert_eq!(c.gateway.address.unwrap().to_string(), "fd00::1/64");
    assert_eq!(c.connections[0].remote_subnets[0].to_string(), "fd20::/48");
    assert_eq!(
        c.connections[0].tunnels[0].remote.unwrap().to_string(),
        "[2001:db8::2]:4500"
    );
}

#[test]
fn overlapping_prefixes_in_one_list_and_a_zero_remote_port_are_refused() {
    let text = minimal()
        .replace("\"10.20.0.0/16\"", "\"10.20.0.0/16\", \"10.20.5.0/24\"")
        .replace("192.0.2.2:4500", "192.0.2.2:0");
    assert_eq!(
        errors(&text),
        "c.toml:8:35: connection[0].remote_subnets[1]: 10.20.5.0/24 overlaps 10.20.0.0/16 (line 8) in the same list\n\
         c.toml:12:10: connection[0].tunnel[0].remote: remote \"192.0.2.2:0\" has port 0: give the peer's port, usually 4500"
    );
}

#[test]
fn errors_in_both_peer_key_levels_are_reported_and_nothing_is_half_built() {
    let text = minimal()
        .replace(
            &format!("peer_public_key = \"{K1}\""),
            "peer_public_key = \"short\"",
        )
        .replace(
            "peer_public_key_file = \"peer.pub\"",
            "peer_public_key_file = \"missing.pub\"",
        );
    assert_eq!(
        errors(&text),
        "c.toml:6:19: connection[0].peer_public_key: invalid base64: expected 44 characters like the output of `tandem genkey`\n\
         c.toml:19:24: connection[0].tunnel[1].peer_public_key_file: file \"missing.pub\" does not exist"
    );
}

#[test]
fn debug_output_never_shows_the_private_key_or_a_psk() {
    // Secrets of 3s, 4s and 5s; the public keys are 7s and 8s.
    let secret = |n: u8| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    };
    let mut k = keys();
    k.insert("private.key", &secret(3));
    k.insert("t1.psk", &secret(4));
    k.insert("t2.psk", &secret(5));
    let c = parse_str("c.toml", &minimal(), &k).unwrap();
    let shown = format!("{c:?} {k:?}");
    assert!(shown.contains("<32 secret bytes>"), "{shown}");
    for n in [3, 4, 5] {
        assert!(!shown.contains(&format!("{n}, {n}, {n}")), "{shown}");
        assert!(!shown.contains(&secret(n)), "{shown}");
    }
}

#[test]
fn durations_past_their_upper_bounds_are_refused_with_their_position() {
    // u64::MAX seconds passed `check` once and then overflowed the engine's clock arithmetic.
    let huge = "18446744073709551615s";
    let with = |key: &str, value: &str| {
        minimal().replace(
            "remote_subnets = [\"10.20.0.0/16\"]\n",
            &format!("remote_subnets = [\"10.20.0.0/16\"]\n{key} = \"{value}\"\n"),
        )
    };
    for (key, value, bound) in [
        ("failback", huge, "24h"),
        ("failback", "25h", "24h"),
        ("dpd_interval", huge, "1m"),
        ("dpd_interval", "61s", "1m"),
        ("dpd_timeout", huge, "10m"),
        ("dpd_timeout", "601s", "10m"),
    ] {
        let e = errors(&with(key, value));
        assert!(
            e.contains("c.toml:9:") && e.contains(&format!("connection[0].{key}")),
            "{key} = {value}: {e}"
        );
        assert!(
            e.contains(&format!("{key} \"{value}\" is too long: at most {bound}")),
            "{key} = {value}: {e}"
        );
    }
    // The bounds themselves are accepted.
    let ok = minimal().replace(
        "remote_subnets = [\"10.20.0.0/16\"]\n",
        "remote_subnets = [\"10.20.0.0/16\"]\nfailback = \"24h\"\ndpd_interval = \"1m\"\ndpd_timeout = \"10m\"\n",
    );
    let c = parse_str("c.toml", &ok, &keys()).unwrap();
    assert_eq!(c.connections[0].dpd_timeout, Duration::from_secs(600));
}

#[test]
fn hooks_default_to_none_and_take_absolute_paths_and_a_bounded_timeout() {
    let c = parse_str("c.toml", &minimal(), &keys()).unwrap();
    assert_eq!(c.hooks, tandem_config::Hooks::default());
    assert_eq!(c.hooks.timeout, Duration::from_secs(10));
    let text = minimal().replace(
        "[[connection]]",
        "[hooks]\non_up = \"/usr/local/sbin/up\"\ntimeout = \"2s\"\n\n[[connection]]",
    );
    let c = parse_str("c.toml", &text, &keys()).unwrap();
    assert_eq!(
        c.hooks.on_up.as_deref(),
        Some(std::path::Path::new("/usr/local/sbin/up"))
    );
    assert_eq!(c.hooks.on_down, None);
    assert_eq!(c.hooks.timeout, Duration::from_secs(2));
    let text = minimal().replace(
        "[[connection]]",
        "[hooks]\non_down = \"hook.sh\"\ntimeout = \"1h\"\non_upp = \"/x\"\n\n[[connection]]",
    );
    let e = errors(&text);
    assert!(
        e.contains("hooks.on_down") && e.contains("absolute path"),
        "{e}"
    );
    assert!(e.contains("hooks.timeout") && e.contains("too long"), "{e}");
    assert!(e.contains("on_upp"), "{e}");
}
