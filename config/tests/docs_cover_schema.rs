#![allow(clippy::unwrap_used)]
//! `docs/configuration.md` documents exactly the keys the parser accepts.
//!
//! The key lists come from [`tandem_config::SCHEMA`], the lists the parser itself judges unknown
//! keys by, so a key added to the parser without documentation (or documented but not accepted)
//! fails here. The reference has one section per table, headed `## `[gateway]`` and so on (the
//! top level under `## Top level`); each key is the first cell of a row of that section's table.

use std::collections::BTreeSet;
use std::path::Path;

fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The heading that introduces `table`'s keys.
fn heading(table: &str) -> String {
    match table {
        "" => "## Top level".to_owned(),
        "gateway" | "control" | "hooks" | "connection.ike" => format!("## `[{table}]`"),
        _ => format!("## `[[{table}]]`"),
    }
}

/// The keys named in the first column of the section under `heading` (up to the next `## `).
fn documented_keys(doc: &str, heading: &str) -> BTreeSet<String> {
    let start = doc
        .lines()
        .position(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("docs/configuration.md has no heading {heading:?}"));
    doc.lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let cell = l.strip_prefix('|')?.split('|').next()?.trim();
            let key = cell.strip_prefix('`')?.strip_suffix('`')?;
            Some(key.to_owned())
        })
        .collect()
}

#[test]
fn every_key_the_parser_accepts_is_documented_under_its_table() {
    let doc = reference();
    let mut missing = Vec::new();
    for (table, keys) in tandem_config::SCHEMA {
        let documented = documented_keys(&doc, &heading(table));
        for key in *keys {
            if !documented.contains(*key) {
                missing.push(format!("{} -> {key}", heading(table)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document these keys (add a row to the section's table):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_reference_documents_no_key_the_parser_would_refuse() {
    let doc = reference();
    let mut extra = Vec::new();
    for (table, keys) in tandem_config::SCHEMA {
        for key in documented_keys(&doc, &heading(table)) {
            if !keys.contains(&key.as_str()) {
                extra.push(format!("{} -> {key}", heading(table)));
            }
        }
    }
    assert!(
        extra.is_empty(),
        "docs/configuration.md documents keys the parser refuses as unknown:\n  {}",
        extra.join("\n  ")
    );
}

/// Tunnel keys that only a `routing = "interfaces"` connection may have.
const INTERFACE_KEYS: [&str; 2] = ["ifname", "inside"];
/// Keys that only a `protocol = "ikev2"` connection may have (its example shows them).
const IKE_TUNNEL_KEYS: [&str; 4] = ["local_id", "remote_id", "probe_target", "probe_source"];

#[test]
fn the_complete_example_in_the_reference_is_a_valid_config() {
    let doc = reference();
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/configuration.md has a ```toml example");
    let mut keys = tandem_config::MemoryKeyFiles::new();
    let key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    for file in [
        "/etc/tandem/private.key",
        "/etc/tandem/tunnel1.psk",
        "/etc/tandem/tunnel2.psk",
    ] {
        keys.insert(file, key);
    }
    // The example's `include` pattern matches one file, of comments only.
    let mut includes = tandem_config::MemoryIncludeFiles::new();
    includes.insert("conf.d/README.toml", "# one file per branch\n");
    let cfg = tandem_config::parse_str_with("configuration.md", example, &keys, &includes)
        .unwrap_or_else(|e| panic!("the example does not parse:\n{e}"));
    // Every key of the schema appears in the example except the alternatives to `peer_public_key`
    // and the keys of `routing = "interfaces"`, which the route-based example shows.
    let route_based = doc
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("routing = \"interfaces\""))
        .expect("docs/configuration.md has a route-based ```toml example");
    for key in INTERFACE_KEYS {
        assert!(
            route_based.contains(&format!("{key} =")),
            "the route-based example does not show connection.tunnel.{key}"
        );
    }
    // The IKEv2 example parses (its PSK files hold ASCII PSKs) and shows every IKEv2 key.
    let ike_example = doc
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("protocol = \"ikev2\""))
        .expect("docs/configuration.md has an IKEv2 ```toml example");
    let mut ike_keys = tandem_config::MemoryKeyFiles::new();
    for file in [
        "/etc/tandem/aws-vpc-tunnel1.psk",
        "/etc/tandem/aws-vpc-tunnel2.psk",
    ] {
        ike_keys.insert(file, "an.aws_psk.of_ascii\n");
    }
    let ike = tandem_config::parse_str("configuration.md", ike_example, &ike_keys)
        .unwrap_or_else(|e| panic!("the IKEv2 example does not parse:\n{e}"));
    assert_eq!(ike.connections[0].protocol.as_str(), "ikev2");
    for (table, list) in tandem_config::SCHEMA {
        for key in *list {
            let ike_only = *table == "connection.ike"
                || (*table == "connection.tunnel" && IKE_TUNNEL_KEYS.contains(key));
            if ike_only {
                assert!(
                    ike_example.contains(&format!("{key} =")),
                    "the IKEv2 example does not show {table}.{key}"
                );
            }
            if *key == "peer_public_key_file"
                || *key == "ike"
                || ike_only
                || (*table == "connection.tunnel" && *key == "peer_public_key")
                || (*table == "connection.tunnel" && INTERFACE_KEYS.contains(key))
            {
                continue;
            }
            assert!(
                example.contains(&format!("{key} ="))
                    || example.contains(&format!("[{key}]"))
                    || example.contains(&format!("[[{key}]]"))
                    || example.contains(&format!("[[{table}.{key}]]")),
                "the example does not show {table}.{key}"
            );
        }
    }
    assert_eq!(cfg.connections[0].tunnels.len(), 2);
}
