#![allow(clippy::unwrap_used, clippy::print_stderr)]
//! The man pages in `docs/man/` are generated from the clap definition (`daemon/src/cli.rs`) by
//! `clap_mangen`: `tandem(8)` and one `tandem-COMMAND(8)` per subcommand. This test renders them
//! again and fails when a committed page differs, so `--help` and the man pages cannot drift.
//!
//! After changing the CLI, regenerate and review the diff:
//!
//! ```sh
//! TANDEM_BLESS=1 cargo test -p tandem --test man_pages
//! ```
//!
//! Blessing is refused when `CI` is set: CI checks the pages, it never rewrites them.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use tandem::cli::Cli;

/// Section 8: system administration commands (a daemon run by root or systemd).
const SECTION: &str = "8";

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man")
}

/// Every page as (file name, contents).
fn render_all() -> Vec<(String, Vec<u8>)> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = Vec::new();
    let mut render = |c: clap::Command, file: String| {
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .section(SECTION)
            .render(&mut out)
            .unwrap();
        pages.push((file, out));
    };
    // Hidden subcommands (`completions`, run by the package build) get no page.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // `build()` gave each subcommand the display name `tandem-NAME` (the page title) and
        // the bin name `tandem NAME` (its synopsis).
        render(sub.clone(), format!("tandem-{}.{SECTION}", sub.get_name()));
    }
    render(cmd, format!("tandem.{SECTION}"));
    pages.sort();
    pages
}

#[test]
fn committed_man_pages_match_the_clap_definition() {
    let dir = man_dir();
    let pages = render_all();
    let wanted: Vec<&str> = pages.iter().map(|(f, _)| f.as_str()).collect();
    // A page left over from a removed subcommand is stale too.
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(&format!(".{SECTION}")) && !wanted.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    if std::env::var_os("TANDEM_BLESS").is_some() {
        assert!(
            std::env::var_os("CI").is_none(),
            "refusing to bless man pages under CI: regenerate them locally and commit"
        );
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in &pages {
            std::fs::write(dir.join(file), text).unwrap();
        }
        for file in &leftovers {
            std::fs::remove_file(dir.join(file)).unwrap();
        }
        eprintln!("wrote {} man pages to {}", pages.len(), dir.display());
        return;
    }
    let mut stale: Vec<String> = leftovers
        .iter()
        .map(|f| format!("{f} (no such command)"))
        .collect();
    for (file, text) in &pages {
        match std::fs::read(dir.join(file)) {
            Ok(committed) if committed == *text => {}
            Ok(_) => stale.push(format!("{file} (differs)")),
            Err(_) => stale.push(format!("{file} (missing)")),
        }
    }
    assert!(
        stale.is_empty(),
        "man pages in {} are stale: {}\nregenerate with: TANDEM_BLESS=1 cargo test -p tandem --test man_pages \
         (then review and commit docs/man/)",
        dir.display(),
        stale.join(", ")
    );
}

#[test]
fn every_subcommand_has_a_page_and_tandem_8_lists_it() {
    let pages = render_all();
    let main = &pages
        .iter()
        .find(|(f, _)| f == "tandem.8")
        .expect("tandem.8 rendered")
        .1;
    let main = String::from_utf8_lossy(main);
    for sub in Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
    {
        let name = sub.get_name();
        assert!(
            pages.iter().any(|(f, _)| *f == format!("tandem-{name}.8")),
            "no page for {name}"
        );
        assert!(main.contains(name), "tandem.8 does not mention {name}");
    }
}
