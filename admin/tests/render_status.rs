//! The human `tandem status` table: route-based tunnels show their interface and carrier.
#![allow(clippy::unwrap_used)]

use tandem_admin::render_status;

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
    assert!(
        lines[2].contains("tunnel1") && lines[2].trim_end().ends_with("aws-t1          on"),
        "{out}"
    );
    assert!(
        lines[3].contains("tunnel2") && lines[3].trim_end().ends_with("aws-t2          off"),
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
