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
    assert_eq!(*c.gateway.private_key, [7u8; 32]);
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
