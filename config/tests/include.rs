#![allow(clippy::unwrap_used)]
//! `include = [...]`: included files on disk, read in sorted order, with their own positions in
//! diagnostics and cross-file duplicates reported with both places.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

const K1: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// Writes `text` to `dir/name` with `mode`.
fn write(dir: &Path, name: &str, text: &str, mode: u32) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A hub's main file: no connection of its own, everything from `conf.d/`.
fn hub(include: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "hub.key", K1, 0o600);
    write(dir.path(), "b.psk", K1, 0o600);
    let main = dir.path().join("tandem.toml");
    write(
        dir.path(),
        "tandem.toml",
        &format!("include = [{include}]\n\n[gateway]\nprivate_key_file = \"hub.key\"\n"),
        0o644,
    );
    (dir, main)
}

/// One branch connection: `n` picks its subnet and its peer key (the hub tells branches on one
/// port apart by peer key and PSK).
fn branch(name: &str, n: u8) -> String {
    use base64::Engine as _;
    let peer = base64::engine::general_purpose::STANDARD.encode([n; 32]);
    format!(
        r#"[[connection]]
name = "{name}"
peer_public_key = "{peer}"
local_subnets = ["10.0.0.0/16"]
remote_subnets = ["10.{n}.0.0/24"]

[[connection.tunnel]]
name = "isp1"
local = "100.64.0.1:4500"
psk_file = "b.psk"
"#
    )
}

#[test]
fn included_files_are_read_in_sorted_order_after_the_main_file() {
    let (dir, main) = hub(r#""conf.d/*.toml""#);
    // Written out of order; a hidden file and a non-matching one are left out.
    write(dir.path(), "conf.d/b-20.toml", &branch("b20", 20), 0o644);
    write(dir.path(), "conf.d/b-03.toml", &branch("b03", 3), 0o644);
    write(dir.path(), "conf.d/b-10.toml", &branch("b10", 10), 0o644);
    write(dir.path(), "conf.d/.b-99.toml", &branch("b99", 99), 0o644);
    write(
        dir.path(),
        "conf.d/b-98.toml.bak",
        &branch("b98", 98),
        0o644,
    );
    let c = tandem_config::load(&main).unwrap();
    let names: Vec<&str> = c.connections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["b03", "b10", "b20"]);
    // Key files named in an included file resolve against the main config's directory.
    assert_eq!(
        c.connections[0].tunnels[0].psk_file,
        dir.path().join("b.psk")
    );
}

#[test]
fn an_error_in_an_included_file_names_that_file_line_and_column() {
    let (dir, main) = hub(r#""conf.d/*.toml""#);
    write(dir.path(), "conf.d/a.toml", &branch("a", 1), 0o644);
    let bad = branch("b", 2).replace("10.2.0.0/24", "10.2.0.1/24");
    write(dir.path(), "conf.d/b.toml", &bad, 0o644);
    let e = tandem_config::load(&main).unwrap_err().to_string();
    let file = dir.path().join("conf.d/b.toml").display().to_string();
    assert_eq!(
        e,
        format!(
            "{file}:5:19: connection[0].remote_subnets[0]: \"10.2.0.1/24\" has host bits set: did you mean \"10.2.0.0/24\"?"
        )
    );
}

#[test]
fn a_syntax_error_in_an_included_file_is_positioned_in_it() {
    let (dir, main) = hub(r#""conf.d/*.toml""#);
    write(
        dir.path(),
        "conf.d/a.toml",
        "[[connection]]\nname = \n",
        0o644,
    );
    let e = tandem_config::load(&main).unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!(
        d.file,
        dir.path().join("conf.d/a.toml").display().to_string()
    );
    assert_eq!((d.line, d.column), (2, 8), "{e}");
    assert!(d.message.starts_with("TOML syntax error"), "{e}");
}

#[test]
fn a_connection_name_in_two_files_is_reported_with_both_places() {
    let (dir, main) = hub(r#""conf.d/*.toml""#);
    write(dir.path(), "conf.d/a.toml", &branch("lyon", 1), 0o644);
    write(dir.path(), "conf.d/b.toml", &branch("lyon", 2), 0o644);
    let e = tandem_config::load(&main).unwrap_err().to_string();
    let a = dir.path().join("conf.d/a.toml").display().to_string();
    let b = dir.path().join("conf.d/b.toml").display().to_string();
    assert_eq!(
        e,
        format!(
            "{b}:2:8: connection[0].name: duplicate connection name \"lyon\" (first at {a}:2:8)"
        )
    );
}

#[test]
fn an_included_file_holds_only_connections_and_includes_do_not_nest() {
    let (dir, main) = hub(r#""conf.d/*.toml""#);
    let text = format!(
        "include = [\"x.toml\"]\n[control]\nsocket = \"/x\"\n{}",
        branch("a", 1)
    );
    write(dir.path(), "conf.d/a.toml", &text, 0o644);
    let e = tandem_config::load(&main).unwrap_err().to_string();
    assert!(
        e.contains("a.toml:1:1: include: includes do not nest"),
        "{e}"
    );
    assert!(
        e.contains("a.toml:2:2: control: an included file holds only [[connection]] blocks"),
        "{e}"
    );
}

#[test]
fn a_named_file_must_exist_but_a_pattern_may_match_nothing() {
    let (_dir, main) = hub(r#""conf.d/missing.toml""#);
    std::fs::create_dir(main.parent().unwrap().join("conf.d")).unwrap();
    let e = tandem_config::load(&main).unwrap_err().to_string();
    assert!(
        e.contains("tandem.toml:1:12: include[0]: included file") && e.contains("does not exist"),
        "{e}"
    );

    // An empty conf.d/ is fine as far as include goes; the gateway still needs a connection.
    let (dir, main) = hub(r#""conf.d/*.toml""#);
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let e = tandem_config::load(&main).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "tandem.toml:1:11: connection: no [[connection]]: a gateway needs at least one connection (none in this file, and none in the included files)"
        ),
        "{e}"
    );
}

#[test]
fn patterns_beyond_a_star_in_the_file_name_are_refused_at_the_pattern() {
    let (_dir, main) = hub(r#""conf.d/*.toml", "*/x.toml", "conf.d/b?.toml""#);
    std::fs::create_dir(main.parent().unwrap().join("conf.d")).unwrap();
    let e = tandem_config::load(&main).unwrap_err().to_string();
    assert!(
        e.contains(":1:29: include[1]: '*' is supported only in the file name"),
        "{e}"
    );
    assert!(e.contains(":1:41: include[2]: '?' is not supported"), "{e}");
}
