#![allow(clippy::unwrap_used)]
//! `tandem check` as a real process on golden bad configs: each file in `tests/golden/` starts
//! with `# expect: LINE` comments holding the exact stderr lines `tandem check -c NAME.toml` must
//! print (run from a directory holding the file and the key fixtures below), and it must exit 1.
//!
//! To regenerate the expectations after a deliberate message change, run with
//! `TANDEM_BLESS=1` and review the diff: the expectations are the product's contract.

use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const EXPECT: &str = "# expect: ";

/// Base64 of 32 bytes of 1, 2, 3...: distinct keys.
fn key(n: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

fn write(dir: &Path, name: &str, contents: &str, mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The key files the golden configs name, with explicit modes (the tests run as root in CI:
/// the check is on mode bits, so it holds for root too).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "private.key", &format!("{}\n", key(1)), 0o600);
    write(d, "t1.psk", &format!("{}\n", key(2)), 0o600);
    write(d, "t2.psk", &key(3), 0o400);
    write(d, "world.psk", &key(4), 0o644);
    write(d, "group.psk", &key(4), 0o640);
    write(d, "world.key", &key(5), 0o604);
    write(d, "loose.key", &key(5), 0o644);
    symlink("loose.key", d.join("link-to-loose.key")).unwrap();
    write(d, "tight.key", &key(6), 0o600);
    symlink("tight.key", d.join("link-to-tight.key")).unwrap();
    write(d, "short.psk", "AQEBAQEBAQEBAQEBAQEBAQ==\n", 0o600);
    write(d, "garbage.psk", "this is not a key\n", 0o600);
    std::fs::create_dir(d.join("dir.psk")).unwrap();
    write(d, "peer.pub", &key(9), 0o644);
    dir
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check(dir: &Path, name: &str, credentials: Option<&Path>) -> Output {
    let mut cmd = Command::new(TANDEM);
    cmd.args(["check", "-c", name]).current_dir(dir);
    match credentials {
        Some(c) => cmd.env("CREDENTIALS_DIRECTORY", c),
        None => cmd.env_remove("CREDENTIALS_DIRECTORY"),
    };
    let out = cmd.output().unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .map_while(|l| l.strip_prefix(EXPECT))
        .map(str::to_owned)
        .collect()
}

/// Rewrites the `# expect:` header of a golden file from what `tandem check` prints now.
fn bless(path: &Path, name: &str) {
    let original = std::fs::read_to_string(path).unwrap();
    let body: String = original
        .lines()
        .skip_while(|l| l.starts_with(EXPECT))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut header: Vec<String> = Vec::new();
    // The header shifts the line numbers it reports: repeat until it describes itself.
    for _ in 0..4 {
        let text: String = header
            .iter()
            .map(|l| format!("{EXPECT}{l}\n"))
            .collect::<String>()
            + &body;
        let dir = fixture();
        std::fs::write(dir.path().join(name), &text).unwrap();
        let got: Vec<String> = check(dir.path(), name, None)
            .stderr
            .lines()
            .map(str::to_owned)
            .collect();
        if got == header {
            std::fs::write(path, text).unwrap();
            return;
        }
        header = got;
    }
    panic!("{name}: expectations did not settle");
}

fn golden(stem: &str) {
    let name = format!("{stem}.toml");
    let path = golden_dir().join(&name);
    if std::env::var_os("TANDEM_BLESS").is_some() {
        bless(&path, &name);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let expected = expectations(&text);
    assert!(!expected.is_empty(), "{name} has no `{EXPECT}` line");
    let dir = fixture();
    std::fs::write(dir.path().join(&name), &text).unwrap();
    let out = check(dir.path(), &name, None);
    assert_eq!(
        out.stderr,
        expected.join("\n") + "\n",
        "stderr of `tandem check -c {name}`"
    );
    assert_eq!(out.code, Some(1), "exit status of `tandem check -c {name}`");
    assert_eq!(out.stdout, "", "stdout of `tandem check -c {name}`");
}

macro_rules! golden_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { golden(stringify!($name)); } )*
        const GOLDEN: &[&str] = &[$(stringify!($name)),*];
    };
}

golden_tests!(
    unknown_table_at_top_level,
    unknown_key_in_a_tunnel,
    wrong_type_for_mtu,
    wrong_type_for_subnets,
    missing_private_key_file,
    missing_remote_subnets,
    missing_gateway_table,
    bad_base64_peer_public_key,
    wrong_length_peer_public_key,
    bad_cidr,
    host_bits_set_in_a_cidr,
    overlapping_remote_subnets_between_connections,
    overlap_of_local_and_remote_subnets,
    duplicate_connection_names,
    duplicate_tunnel_names,
    duplicate_endpoint_pairs,
    connection_without_a_tunnel,
    tied_priorities_in_active_standby,
    dpd_timeout_not_greater_than_dpd_interval,
    mtu_out_of_range,
    psk_file_missing,
    psk_file_unreadable,
    psk_file_world_readable,
    psk_file_group_readable,
    private_key_file_is_a_symlink_to_a_loose_file,
    private_key_file_world_readable,
    psk_of_the_wrong_length,
    psk_file_not_base64,
    bad_duration,
    unknown_mode,
    toml_syntax_error,
    tunnel_without_a_peer_public_key,
    bad_socket_address,
    rekey_after_out_of_range,
    mixed_address_families_in_a_tunnel,
    both_peer_public_key_forms,
    tunnel_without_local_or_remote,
    several_errors_each_on_its_own_line,
    failback_bad_value,
    invalid_tun_name,
);

#[test]
fn every_golden_file_has_a_test_and_there_are_at_least_25() {
    let mut files: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".toml").map(str::to_owned))
        .collect();
    files.sort();
    let mut tests: Vec<String> = GOLDEN.iter().map(|s| (*s).to_owned()).collect();
    tests.sort();
    assert_eq!(files, tests);
    assert!(tests.len() >= 25);
}

/// The golden configs without their mistakes: the same text with the fixture's good files.
const GOOD: &str = r#"[gateway]
private_key_file = "private.key"

[[connection]]
name = "prod"
peer_public_key_file = "peer.pub"
local_subnets = ["10.10.0.0/24"]
remote_subnets = ["10.20.0.0/16"]

[[connection.tunnel]]
name = "tunnel1"
remote = "192.0.2.2:4500"
psk_file = "t1.psk"

[[connection.tunnel]]
name = "tunnel2"
local = "198.51.100.1:4500"
psk_file = "t2.psk"
"#;

#[test]
fn a_valid_config_exits_0_with_a_summary_on_stdout() {
    let dir = fixture();
    std::fs::write(dir.path().join("good.toml"), GOOD).unwrap();
    let out = check(dir.path(), "good.toml", None);
    assert_eq!(out.stderr, "");
    assert_eq!(
        out.stdout,
        "good.toml: OK (1 connection, 2 tunnels; tun tandem0 mtu 1415)\n"
    );
    assert_eq!(out.code, Some(0));
}

/// A symlink is refused, not followed, even to a good key: whoever controls the link could
/// point it elsewhere (config/src/keyfile.rs).
#[test]
fn a_symlink_to_an_owner_only_key_is_refused() {
    let dir = fixture();
    let text = GOOD.replace("\"private.key\"", "\"link-to-tight.key\"");
    std::fs::write(dir.path().join("good.toml"), text).unwrap();
    let out = check(dir.path(), "good.toml", None);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(
            "gateway.private_key_file: \"link-to-tight.key\" is a symlink to \"tight.key\": a key \
             file must be the file itself"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn relative_key_paths_resolve_against_the_config_directory_not_the_working_directory() {
    let dir = fixture();
    let sub = dir.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("good.toml"),
        GOOD.replace("\"private.key\"", "\"../private.key\"")
            .replace("\"peer.pub\"", "\"../peer.pub\"")
            .replace("\"t1.psk\"", "\"../t1.psk\"")
            .replace("\"t2.psk\"", "\"../t2.psk\""),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = sub.join("good.toml");
    let out = check(elsewhere.path(), config.to_str().unwrap(), None);
    assert_eq!((out.code, out.stderr.as_str()), (Some(0), ""));
}

#[test]
fn bare_key_names_are_taken_from_the_systemd_credentials_directory() {
    let dir = fixture();
    let creds = tempfile::tempdir().unwrap();
    // systemd's LoadCredential= files are 0400.
    write(creds.path(), "tandem.key", &key(7), 0o400);
    let text = GOOD.replace("\"private.key\"", "\"tandem.key\"");
    std::fs::write(dir.path().join("good.toml"), &text).unwrap();

    let out = check(dir.path(), "good.toml", Some(creds.path()));
    assert_eq!((out.code, out.stderr.as_str()), (Some(0), ""));

    let out = check(dir.path(), "good.toml", None);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        "good.toml:2:20: gateway.private_key_file: file \"tandem.key\" does not exist\n"
    );
}

#[test]
fn a_missing_config_file_is_a_user_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), "nope.toml", None);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        "nope.toml: cannot read the config file: No such file or directory (os error 2)\n"
    );
}
