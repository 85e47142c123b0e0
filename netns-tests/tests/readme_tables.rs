//! The READMEs' tables list what exists: every test file in `netns-tests/tests/` has a row in
//! `netns-tests/README.md`, and every fuzz target in `fuzz/fuzz_targets/` (a file with a
//! `fuzz_target!`, declared as a `[[bin]]` in `fuzz/Cargo.toml`) has a row in `fuzz/README.md`.
//! A row is a Markdown table line whose first cell is the name in backticks. Needs no root.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first cells, backticks removed, of the Markdown table rows in `readme`.
fn first_cells(readme: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(readme)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme.display()));
    text.lines()
        .filter_map(|l| {
            let cell = l.strip_prefix('|')?.split('|').next()?.trim();
            Some(cell.strip_prefix('`')?.strip_suffix('`')?.to_owned())
        })
        .collect()
}

/// `*.rs` file names directly in `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_netns_test_file_has_a_row_in_the_readme() {
    let rows = first_cells(&repo().join("netns-tests/README.md"));
    let missing: Vec<String> = rust_files(&repo().join("netns-tests/tests"))
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !rows.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "netns-tests/README.md's test table has no row for: {missing:?}"
    );
}

#[test]
fn every_fuzz_target_is_declared_and_has_a_row_in_the_readme() {
    let rows = first_cells(&repo().join("fuzz/README.md"));
    let manifest = std::fs::read_to_string(repo().join("fuzz/Cargo.toml")).unwrap();
    let targets: Vec<String> = rust_files(&repo().join("fuzz/fuzz_targets"))
        .into_iter()
        .filter(|(_, text)| text.contains("fuzz_target!"))
        .map(|(name, _)| name.trim_end_matches(".rs").to_owned())
        .collect();
    assert!(
        targets.len() >= 7,
        "found only {targets:?} in fuzz/fuzz_targets"
    );
    for t in &targets {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")),
            "fuzz/Cargo.toml declares no [[bin]] for fuzz_targets/{t}.rs"
        );
    }
    let missing: Vec<&String> = targets.iter().filter(|t| !rows.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "fuzz/README.md's target table has no row for: {missing:?}"
    );
}
