//! Least privilege, at the function level with real capability sets: `caps::require_net_admin`
//! run in a child process that `setpriv` made a non-root user (`nobody`), once holding only
//! `CAP_NET_ADMIN` (ambient, as `AmbientCapabilities=CAP_NET_ADMIN` gives it), once holding none.
//!
//! The child is this test binary itself, re-run with a filter that selects the ignored
//! `child_checks_its_capabilities` and an env var that says what it must find (run on its own, without
//! the env var, that helper fails: it is not a test). The checkout may
//! not be traversable by `nobody`, so the child runs in a mount namespace of its own where the
//! binary is bind-mounted onto an empty file in a world-readable temp dir (a copy instead could
//! fail to exec with ETXTBSY while another test thread forks).
#![allow(clippy::unwrap_used)]
#![allow(clippy::print_stderr)]

mod support;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use support::is_root;

use tandem::caps::{self, CapError};

const CHILD_ENV: &str = "TANDEM_CAPS_CHILD_EXPECT";

/// Root is needed to switch users; skip loudly only outside CI.
fn can_setpriv() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run these tests as root"
    );
    eprintln!("SKIPPING: not root, cannot setpriv to another user");
    false
}

/// A world-readable temp dir holding an empty file for the bind mount; removed on drop.
struct MountPoint(PathBuf);

impl MountPoint {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-caps-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("notify_caps");
        std::fs::write(&exe, b"").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(exe)
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs the child check as `nobody` with the given extra setpriv arguments.
fn run_child_as_nobody(tag: &str, caps_args: &[&str], expect: &str) -> std::process::Output {
    let exe = MountPoint::new(tag);
    let script = format!(
        "exe=\"$1\"; shift; mount --bind \"$0\" \"$exe\" && \
         exec setpriv --reuid=nobody --regid=nogroup --clear-groups {} \"$exe\" \"$@\"",
        caps_args.join(" ")
    );
    Command::new("unshare")
        .args(["--mount", "--", "sh", "-c", &script])
        .arg(std::env::current_exe().unwrap())
        .arg(&exe.0)
        .args([
            "child_checks_its_capabilities",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, expect)
        .output()
        .unwrap()
}

/// Not a test of its own: the parent tests below run it (ignored, so a plain `cargo test` lists it
/// as such instead of counting a pass); run without `TANDEM_CAPS_CHILD_EXPECT`, it fails.
#[test]
#[ignore = "a helper run by the tests below as `nobody`, not a test of its own"]
fn child_checks_its_capabilities() {
    let Some(expect) = std::env::var_os(CHILD_ENV) else {
        panic!("{CHILD_ENV} is not set: this helper only runs as the child of the tests below");
    };
    assert!(!is_root(), "the child must not be root");
    match expect.to_str().unwrap() {
        "ok" => assert_eq!(caps::require_net_admin(), Ok(())),
        "missing" => {
            let err = caps::require_net_admin().unwrap_err();
            assert!(matches!(err, CapError::MissingNetAdmin { .. }), "{err:?}");
            eprintln!("CHILD-MESSAGE: {err}");
        }
        other => panic!("unknown expectation {other}"),
    }
}

#[test]
fn non_root_user_with_only_net_admin_passes_the_check() {
    if !can_setpriv() {
        return;
    }
    let out = run_child_as_nobody(
        "ok",
        &["--inh-caps=+net_admin", "--ambient-caps=+net_admin"],
        "ok",
    );
    assert!(
        out.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {stdout}"
    );
}

#[test]
fn non_root_user_without_net_admin_is_refused_with_a_clear_message() {
    if !can_setpriv() {
        return;
    }
    let out = run_child_as_nobody("missing", &[], "missing");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{all}");
    assert!(
        all.contains("1 passed"),
        "the child test did not run: {all}"
    );
    assert!(
        all.contains("CHILD-MESSAGE: tandem run needs CAP_NET_ADMIN"),
        "message: {all}"
    );
}

#[test]
fn root_passes_the_check() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        eprintln!("SKIPPING: not root");
        return;
    }
    assert_eq!(caps::require_net_admin(), Ok(()));
}
