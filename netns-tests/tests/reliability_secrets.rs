//! Secrets never leak (docs/cli.md, SECURITY.md): both daemons run at `RUST_LOG=trace` with a key log
//! through the first handshakes, rekeys (`rekey_after = "2s"`), an unplanned failover (isp1
//! blackholed) with failback, and a planned one (`tandem failover`); then every private key, PSK
//! and SA key is searched for in the logs, `tandem status` (JSON and table) and the metrics text,
//! in every encoding a careless print would use: base64 (also unpadded), hex (either case), a
//! Rust byte-array `Debug` (`[12, 34, …`), and 8-byte prefixes of each. Zero hits.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod reliability_common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use reliability_common::*;
use tandem_netns_tests::capture::parse_keylog;
use tandem_netns_tests::impair::{Direction, NftImpairment};
use tandem_netns_tests::tandem::{Side, TandemOpts};
use tandem_netns_tests::topo::Lab;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every way of printing `secret` that a leak could take, and its 8-byte prefixes.
fn encodings(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64u = base64::engine::general_purpose::STANDARD_NO_PAD;
    let debug = |b: &[u8]| {
        b.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        b64.encode(secret),
        b64u.encode(secret),
        // The first 8 bytes: a truncated print (base64 of 9 bytes = 12 chars, no padding).
        b64u.encode(&secret[..9]),
        hex(secret),
        hex(&secret[..8]),
        format!("[{}", debug(&secret[..8])),
        debug(&secret[..8]).replace(", ", ","),
    ]
}

#[test]
fn no_private_key_psk_or_sa_key_appears_in_trace_logs_status_or_metrics() {
    if !tandem_netns_tests::can_run_as_root("secrets") {
        return;
    }
    let lab = Lab::new().unwrap();
    let pair = start_pair(
        &lab,
        TandemOpts {
            keylog: true,
            log: "trace",
            ..TandemOpts::default()
        },
        "rekey_after = \"2s\"\n",
    );
    let hs = |ns| metric(&metrics(ns), "tandem_handshakes_total", &[]);
    let hs0 = hs(&lab.cgw) + hs(&lab.vpcgw);
    // Rekeys: at least two per tunnel.
    let t = Instant::now();
    while hs(&lab.cgw) + hs(&lab.vpcgw) < hs0 + 4.0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let hs1 = hs(&lab.cgw) + hs(&lab.vpcgw);
    eprintln!(
        "handshakes (both sides) {hs0} -> {hs1} in {:?}",
        t.elapsed()
    );
    assert!(hs1 >= hs0 + 4.0, "no rekeys happened");
    // An unplanned failover and failback.
    let bh = NftImpairment::blackhole(&lab.isp1, "cgw", Direction::Both).unwrap();
    pair.wait_until(Duration::from_secs(5), "failover to tunnel2", |a, b| {
        a.active().as_deref() == Some("tunnel2") && b.active().as_deref() == Some("tunnel2")
    })
    .unwrap();
    bh.heal().unwrap();
    pair.wait_until(Duration::from_secs(8), "failback to tunnel1", |a, b| {
        a.active().as_deref() == Some("tunnel1") && b.active().as_deref() == Some("tunnel1")
    })
    .unwrap();
    // A planned one.
    pair.cgw.failover(Some("tunnel2"), false).unwrap();
    pair.cgw.failover(None, true).unwrap();
    pair.wait_both_up(Duration::from_secs(5)).unwrap();

    // Everything an operator (or an attacker reading logs) can see.
    let mut seen = Vec::new();
    for (side, ns) in [(Side::Cgw, &lab.cgw), (Side::Vpcgw, &lab.vpcgw)] {
        let d = pair.daemon(side);
        seen.push((format!("{} log", side.name()), d.log_text()));
        seen.push((
            format!("{} status --json", side.name()),
            d.status().unwrap().0.to_string(),
        ));
        seen.push((format!("{} status", side.name()), d.status_text().unwrap()));
        seen.push((format!("{} metrics", side.name()), metrics(ns)));
    }
    for (what, text) in &seen {
        eprintln!(
            "{what}: {} bytes, {} lines",
            text.len(),
            text.lines().count()
        );
    }
    let logs = &seen[0].1;
    // The daemons log little below info (the data path logs nothing per packet), but the
    // debug events of every SA install must be there.
    eprintln!(
        "cgw log: {} DEBUG and {} TRACE lines",
        logs.matches(" DEBUG ").count(),
        logs.matches(" TRACE ").count()
    );
    assert!(
        logs.contains(" DEBUG ") && logs.contains("SA installed"),
        "the log is not at debug/trace level:\n{logs}"
    );
    assert!(
        logs.to_lowercase().contains("key log"),
        "the key log warning is missing (docs/protocol.md)"
    );

    // Every secret of the run.
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for f in ["cgw.key", "vpcgw.key", "tunnel1.psk", "tunnel2.psk"] {
        secrets.push((f.to_string(), key_file(&pair.setup, f).to_vec()));
    }
    let mut sa_keys = std::collections::BTreeSet::new();
    for side in [Side::Cgw, Side::Vpcgw] {
        let text = std::fs::read_to_string(pair.setup.keylog_path(side)).unwrap();
        for sa in parse_keylog(&text).unwrap() {
            sa_keys.insert(sa.key_salt_hex.clone());
        }
    }
    for ks in &sa_keys {
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&ks[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        secrets.push((format!("SA key {}…", &ks[..8]), bytes));
    }
    eprintln!(
        "searching for {} secrets (2 private keys, 2 PSKs, {} SA keys) in {} encodings each",
        secrets.len(),
        sa_keys.len(),
        encodings(&[0; 32]).len()
    );
    // Two tunnels, each with its first handshake and the forced rekey, two directions each: 8
    // distinct SA keys at least. (A responder logs an SA's keys only once the initiator has
    // confirmed them, so an initiation that is answered but never confirmed adds none.)
    assert!(
        sa_keys.len() >= 8,
        "expected rekeyed SAs: {}",
        sa_keys.len()
    );
    let mut hits = Vec::new();
    for (what, text) in &seen {
        let lower = text.to_lowercase();
        for (name, secret) in &secrets {
            for enc in encodings(secret) {
                let hay = if enc.chars().all(|c| c.is_ascii_hexdigit()) {
                    &lower
                } else {
                    text
                };
                if hay.contains(&enc) {
                    hits.push(format!("{name} as {enc:?} in {what}"));
                }
            }
        }
    }
    eprintln!("hits: {}", hits.len());
    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");
}
