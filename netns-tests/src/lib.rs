//! The namespace lab (netns-tests/README.md): builds the test topology out of network namespaces and veths,
//! runs two `tandem` daemons, drives ping/iperf3 and probe streams, runs failover drills and the
//! benchmark. Everything it creates has a unique name and is torn down on `Drop`.
//!
//! Modules, bottom up: [`netns`] (RAII namespaces, veths, commands inside), [`process`] (RAII
//! background processes, CPU/RSS), [`charon`] (strongSwan as an AWS-like IKEv2 peer), [`topo`] (the [`topo::Lab`] builder), [`impair`] (nftables
//! blackholes and random loss), [`wanem`] (the userspace WAN emulator), [`probe`] (the 1 ms probe
//! stream), [`traffic`] (iperf3 and ping), [`tandem`] (keys, configs, daemons, status),
//! [`report`] (aligned tables); [`routed`] (route-based tunnels: inside addresses, carriers,
//! `ip monitor` watches), [`frr`] (FRR's zebra + bgpd in a namespace) and [`ha`] (an HA pair
//! of office gateways under BGP); [`branches`] (N branch gateways in one process, real engines)
//! and [`scale`] (the head-end at scale: one hub, N branches, cost against N).

pub mod aws_lab;
pub mod branches;
pub mod budget;
pub mod capture;
pub mod charon;
pub mod drill;
pub mod frr;
pub mod ha;
pub mod helper;
pub mod impair;
pub mod netns;
pub mod probe;
pub mod process;
pub mod report;
pub mod routed;
pub mod scale;
pub mod tandem;
pub mod topo;
pub mod traffic;
pub mod wanem;

/// The lock that timing-sensitive lab tests hold for their whole run: one lab at a time per test
/// binary (cargo runs the binaries themselves one after the other). Two labs pushing traffic at
/// once on a 2-core machine starve each other's daemons and probe streams, and the timing bounds
/// would measure the neighbour instead of the code. A test that panicked while holding it does
/// not poison it for the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything that can go wrong while building or driving the lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started.
    #[error("cannot run `{0}`: {1}")]
    Spawn(String, #[source] std::io::Error),
    /// A command exited with a failure status.
    #[error("`{cmd}` failed ({status}): {stderr} {stdout}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error.
        stderr: String,
        /// Its standard output.
        stdout: String,
    },
    /// Output that could not be understood.
    #[error("cannot parse {0}")]
    Parse(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The tandem binary is missing or misbehaved.
    #[error("{0}")]
    Tandem(String),
}

/// Whether tests that need root may run: true as root; when not root, false (the caller skips
/// loudly) unless `CI` is set, in which case the test must not silently pass.
pub fn can_run_as_root(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        // Run anyway and let it fail: CI must never skip these.
        return true;
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("SKIPPED {test}: needs root (network namespaces); run as root or set CI=1");
    }
    false
}
