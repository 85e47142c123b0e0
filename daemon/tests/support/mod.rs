//! Helpers shared by the daemon's integration tests (each test file is its own crate and
//! includes this module).
#![allow(dead_code)] // each test crate uses a part of it

/// Whether the test runs with root's privileges: the *effective* uid is 0, which is what
/// namespaces, TUN devices, `chown` and switching users check.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether a test that needs root may run: true as root; otherwise it skips loudly (`what`
/// says what it needs) — unless `CI` is set, where not being root is a failure.
pub fn can_run_as_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run these tests as root"
    );
    eprintln!("SKIPPING: {what} need root");
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
