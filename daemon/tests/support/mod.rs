//! Helpers shared by the daemon's integration tests (each test file is its own crate and
//! includes this module).
#![allow(dead_code)] // each test crate uses a part of it

pub mod lab;

/// Whether the test runs with root's privileges: the *effective* uid is 0, which is what
/// namespaces, TUN devices, `chown` and switching users check.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether a test that needs root may run: true as root; otherwise it skips loudly (`what`
/// says what it needs) — unless `CI` is set, where not being root is a failure.
pub fn can_run_as_root(what: &str) -> bool {
    available(
        is_root(),
        &format!("{what} need root"),
        "CI must run these tests as root",
    )
}

/// `present` (a tool, a privilege the test needs), or the test skips loudly saying `why` —
/// unless `CI` is set, where it fails with `in_ci`.
pub fn available(present: bool, why: &str, in_ci: &str) -> bool {
    if present {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{in_ci}");
    eprintln!("SKIPPING: {why}");
    false
}

/// Runs `cmd`, fails the test (with its stderr) unless it succeeds, and returns its stdout.
pub fn stdout_of(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `args[0] args[1..]`, fails the test (with its output) unless it succeeds.
pub fn sh(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A short id for the names of this test's namespaces and scratch directories: the process id
/// and a count, so that tests running side by side in one process get distinct ones too.
pub fn unique_id() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Writes `text` to `dir/name` with mode 0600 (key material, configs naming it).
pub fn write_secret(dir: &std::path::Path, name: &str, text: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join(name), text.as_ref()).unwrap();
    std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `tandem run -c config` in a network namespace of its own (`unshare --net`, loopback up): the
/// namespace dies with the process. Its stderr goes to `stderr`.
pub fn run_in_new_netns(
    tandem: &str,
    config: &std::path::Path,
    stderr: std::process::Stdio,
) -> std::process::Child {
    std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg("ip link set lo up && exec \"$0\" run -c \"$1\"")
        .arg(tandem)
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("TANDEM_KEYLOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}
