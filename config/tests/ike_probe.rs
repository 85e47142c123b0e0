#![allow(clippy::unwrap_used)]
//! `probe_target` / `probe_source` of an IKEv2 tunnel (docs/configuration.md): the defaults
//! taken from `inside` and the local subnets, and the errors at the value at fault.

use std::net::IpAddr;

use tandem_config::{IkeProbe, MemoryKeyFiles, parse_str};

fn keys() -> MemoryKeyFiles {
    let mut k = MemoryKeyFiles::new();
    k.insert("t1.psk", "tunnel1.psk_from_aws.0123456789");
    k.insert("t2.psk", "tunnel2.psk_from_aws.9876543210");
    k
}

/// An IKEv2 connection with `conn` lines (routing, subnets) and each tunnel's extra lines.
fn config(conn: &str, t1: &str, t2: &str) -> String {
    format!(
        r#"[[connection]]
name = "aws"
protocol = "ikev2"
{conn}

[[connection.tunnel]]
name = "tunnel1"
local = "192.0.2.1"
remote = "192.0.2.2"
psk_file = "t1.psk"
{t1}

[[connection.tunnel]]
name = "tunnel2"
local = "198.51.100.1"
remote = "198.51.100.2"
psk_file = "t2.psk"
{t2}
"#
    )
}

const STATIC: &str = r#"local_subnets = ["10.10.0.0/24", "fd00:10::/64"]
remote_subnets = ["10.20.0.0/24", "fd00:20::/64"]"#;

fn probes(text: &str) -> Vec<Option<IkeProbe>> {
    let c = parse_str("c.toml", text, &keys()).unwrap();
    c.connections[0]
        .tunnels
        .iter()
        .map(|t| t.ike.as_ref().unwrap().probe)
        .collect()
}

fn probe(source: &str, target: &str) -> Option<IkeProbe> {
    Some(IkeProbe {
        source: source.parse::<IpAddr>().unwrap(),
        target: target.parse::<IpAddr>().unwrap(),
    })
}

#[test]
fn a_probe_target_takes_the_first_host_of_the_first_local_subnet_of_its_family_as_source() {
    let text = config(
        STATIC,
        r#"probe_target = "10.20.0.1""#,
        r#"probe_target = "fd00:20::2"
probe_source = "fd00:10::99""#,
    );
    assert_eq!(
        probes(&text),
        vec![
            probe("10.10.0.1", "10.20.0.1"),
            probe("fd00:10::99", "fd00:20::2")
        ]
    );
    // No target, no inside: no probes.
    assert_eq!(probes(&config(STATIC, "", "")), vec![None, None]);
}

#[test]
fn with_inside_addresses_the_peers_inside_host_is_the_default_target() {
    let conn = r#"routing = "interfaces"
local_subnets = ["0.0.0.0/0", "::/0"]
remote_subnets = ["0.0.0.0/0", "::/0"]"#;
    let text = config(
        conn,
        r#"inside = "169.254.44.42/30""#,
        r#"inside = ["169.254.45.1/30", "fd00:45::2/126"]
probe_target = "fd00:45::1""#,
    );
    assert_eq!(
        probes(&text),
        vec![
            probe("169.254.44.42", "169.254.44.41"),
            probe("fd00:45::2", "fd00:45::1")
        ]
    );
    let text = config(conn, r#"inside = "169.254.45.1/30""#, "");
    assert_eq!(probes(&text)[0], probe("169.254.45.1", "169.254.45.2"));
}

#[test]
fn probe_addresses_outside_the_selectors_are_errors_at_their_value() {
    let text = config(
        STATIC,
        r#"probe_target = "10.30.0.1""#,
        r#"probe_target = "10.20.0.1"
probe_source = "fd00:10::1""#,
    );
    let e = parse_str("c.toml", &text, &keys()).unwrap_err().to_string();
    assert!(
        e.contains(
            "c.toml:12:16: connection[0].tunnel[0].probe_target: probe_target 10.30.0.1 is not in remote_subnets"
        ),
        "{e}"
    );
    assert!(
        e.contains(
            "c.toml:20:16: connection[0].tunnel[1].probe_source: probe_source fd00:10::1 and probe_target 10.20.0.1 are of different address families"
        ),
        "{e}"
    );
    let text = config(
        STATIC,
        r#"probe_target = "10.20.0.1"
probe_source = "10.99.0.1""#,
        r#"probe_source = "10.10.0.1""#,
    );
    let e = parse_str("c.toml", &text, &keys()).unwrap_err().to_string();
    assert!(
        e.contains(
            "connection[0].tunnel[0].probe_source: probe_source 10.99.0.1 is not in local_subnets"
        ),
        "{e}"
    );
    assert!(
        e.contains("connection[0].tunnel[1].probe_source: probe_source needs probe_target"),
        "{e}"
    );
    let text = config(STATIC, r#"probe_target = "not an address""#, "");
    let e = parse_str("c.toml", &text, &keys()).unwrap_err().to_string();
    assert!(e.contains("invalid address \"not an address\""), "{e}");
}
