//! The config parser on arbitrary text: never panics, and every error has a position inside the
//! text (1-based line and column) and renders as `FILE:LINE:COL: ...` lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_config::{ConfigError, MemoryKeyFiles, parse_duration, parse_key_base64, parse_str};

const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Key files that a fuzzed config may name: a good key, a short one, garbage.
    let mut keys = MemoryKeyFiles::new();
    keys.insert("k", KEY);
    keys.insert("p", KEY);
    keys.insert("short", "AQEBAQEBAQEBAQEBAQEBAQ==");
    keys.insert("junk", text);
    let _ = parse_duration(text);
    let _ = parse_key_base64(text);
    match parse_str("f.toml", text, &keys) {
        Ok(config) => {
            assert!(!config.connections.is_empty());
            assert!(config.connections.iter().all(|c| !c.tunnels.is_empty()));
        }
        Err(e) => {
            let lines = text.split('\n').count();
            let ConfigError::Invalid(diags) = &e else {
                panic!("parse_str read a file");
            };
            assert!(!diags.is_empty());
            for d in diags {
                assert!(d.line >= 1 && d.line <= lines, "{d}");
                assert!(d.column >= 1, "{d}");
            }
            let rendered = e.to_string();
            assert_eq!(rendered.lines().count(), diags.len(), "{rendered}");
        }
    }
});
