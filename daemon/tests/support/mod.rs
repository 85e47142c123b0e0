//! Helpers shared by the daemon's integration tests (each test file is its own crate and
//! includes this module).

/// Whether the test runs with root's privileges: the *effective* uid is 0, which is what
/// namespaces, TUN devices, `chown` and switching users check.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
