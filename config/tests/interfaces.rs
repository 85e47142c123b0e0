#![allow(clippy::unwrap_used)]
//! `routing = "interfaces"`: one interface per tunnel, its name and inside addresses, and the
//! errors, each at the value at fault.

use tandem_config::{MemoryKeyFiles, Routing, parse_str};

const K1: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn keys() -> MemoryKeyFiles {
    let mut k = MemoryKeyFiles::new();
    k.insert("private.key", K1);
    k.insert("t1.psk", K1);
    k.insert("t2.psk", K1);
    k
}

/// A BGP-style connection (selectors 0.0.0.0/0 both ways) with `routing` and the tunnels' extra
/// lines spliced in.
fn config(conn: &str, routing: &str, t1: &str, t2: &str) -> String {
    format!(
        r#"[gateway]
private_key_file = "private.key"

[[connection]]
name = "{conn}"
peer_public_key = "{K1}"
local_subnets = ["0.0.0.0/0", "::/0"]
remote_subnets = ["0.0.0.0/0", "::/0"]
routing = "{routing}"

[[connection.tunnel]]
name = "tunnel1"
remote = "192.0.2.2:4500"
psk_file = "t1.psk"
{t1}

[[connection.tunnel]]
name = "tunnel2"
remote = "198.51.100.2:4500"
psk_file = "t2.psk"
{t2}
"#
    )
}

fn errors(text: &str) -> String {
    parse_str("c.toml", text, &keys()).unwrap_err().to_string()
}

#[test]
fn each_tunnel_gets_its_interface_with_the_default_name_and_its_inside_addresses() {
    let text = config(
        "aws",
        "interfaces",
        r#"inside = "169.254.44.42/30""#,
        r#"ifname = "aws-b"
inside = ["169.254.45.2/30", "fd00:45::2/126"]"#,
    );
    let c = parse_str("c.toml", &text, &keys()).unwrap();
    let conn = &c.connections[0];
    assert_eq!(conn.routing, Routing::Interfaces);
    let i1 = conn.tunnels[0].interface.as_ref().unwrap();
    assert_eq!(i1.ifname, "aws-tunnel1");
    assert_eq!(i1.inside, vec!["169.254.44.42/30".parse().unwrap()]);
    let i2 = conn.tunnels[1].interface.as_ref().unwrap();
    assert_eq!(i2.ifname, "aws-b");
    assert_eq!(i2.inside.len(), 2);
}

#[test]
fn a_long_default_name_is_cut_to_15_bytes_and_a_collision_asks_for_ifname() {
    let text = config("production-vpc", "interfaces", "", "");
    let e = errors(&text);
    // Both tunnels cut to "production-vpc-": the second one is refused at its name.
    assert_eq!(
        e,
        "c.toml:18:8: connection[0].tunnel[1].ifname: the default interface name \"production-vpc-\" (\"<connection>-<tunnel>\" cut to 15 bytes) is already used by tunnel \"tunnel1\" of connection \"production-vpc\" (line 12): set ifname"
    );
    let fixed = config("production-vpc", "interfaces", "", r#"ifname = "prod-t2""#);
    let c = parse_str("c.toml", &fixed, &keys()).unwrap();
    assert_eq!(
        c.connections[0].tunnels[0]
            .interface
            .as_ref()
            .unwrap()
            .ifname,
        "production-vpc-"
    );
}

#[test]
fn interface_names_and_inside_addresses_are_checked_where_they_are_written() {
    let text = config(
        "aws",
        "interfaces",
        r#"ifname = "a-name-that-is-too-long"
inside = "169.254.44.40/30""#,
        r#"ifname = "tandem0"
inside = ["169.254.45.2/29", "fd00::1/126", "fd00::5/126"]"#,
    );
    let e = errors(&text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(
        lines,
        [
            "c.toml:15:10: connection[0].tunnel[0].ifname: invalid interface name \"a-name-that-is-too-long\": use 1 to 15 letters, digits, '-', '_' or '.'",
            "c.toml:16:10: connection[0].tunnel[0].inside: inside address 169.254.44.40/30 is the network or broadcast address of its /30: use one of its two hosts",
            "c.toml:22:10: connection[0].tunnel[1].ifname: interface name \"tandem0\" is already used by [gateway] tun_name",
            "c.toml:23:11: connection[0].tunnel[1].inside[0]: inside address 169.254.45.2/29 is not a /30: a tunnel's IPv4 inside network is a /30 (its two hosts are the tunnel's ends)",
            "c.toml:23:45: connection[0].tunnel[1].inside[2]: a second IPv6 inside address (the first is fd00::1/126 on line 23): at most one per family",
        ]
    );
}

#[test]
fn ifname_and_inside_belong_to_interface_mode_and_static_mode_keeps_its_overlap_rules() {
    let text = config(
        "aws",
        "static",
        r#"ifname = "x""#,
        r#"inside = "169.254.45.2/30""#,
    );
    let e = errors(&text);
    assert!(
        e.contains("c.toml:15:10: connection[0].tunnel[0].ifname: ifname applies only to a connection with routing = \"interfaces\""),
        "{e}"
    );
    assert!(
        e.contains("c.toml:21:10: connection[0].tunnel[1].inside: inside applies only"),
        "{e}"
    );
    // Static: 0.0.0.0/0 on both sides overlaps; interface mode allows it (see the first test).
    assert!(e.contains("must be disjoint"), "{e}");
    let bad = config("aws", "bgp", "", "");
    assert!(
        errors(&bad).contains("unknown routing \"bgp\": expected \"static\" or \"interfaces\""),
        "{}",
        errors(&bad)
    );
}

#[test]
fn interface_connections_may_overlap_each_other_and_a_static_one() {
    let mut text = config("aws", "interfaces", "", "");
    text += &format!(
        r#"
[[connection]]
name = "gcp"
peer_public_key = "{K1}"
local_subnets = ["0.0.0.0/0"]
remote_subnets = ["0.0.0.0/0"]
routing = "interfaces"
[[connection.tunnel]]
name = "t1"
remote = "203.0.113.2:4500"
psk_file = "t1.psk"

[[connection]]
name = "lab"
peer_public_key = "{K1}"
local_subnets = ["10.10.0.0/24"]
remote_subnets = ["10.20.0.0/16"]
[[connection.tunnel]]
name = "t1"
remote = "203.0.113.3:4500"
psk_file = "t1.psk"
"#
    );
    let c = parse_str("c.toml", &text, &keys()).unwrap();
    assert_eq!(c.connections.len(), 3);
    assert!(c.connections[2].tunnels[0].interface.is_none());
}
