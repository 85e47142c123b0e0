//! RAII network namespaces and the commands run inside them.
//!
//! Every namespace is named `tdm-<pid>-<lab>-<role>`: the pid makes names unique across
//! concurrent test processes, the lab number across labs of one process, so that a leak check can
//! look for exactly one lab's names. A namespace is deleted when its [`Netns`] is dropped (also
//! while a test unwinds from a panic); namespaces left by a process that was SIGKILLed are reaped
//! by [`reap_stale`] the next time a lab is built.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Error;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The prefix shared by every namespace this crate creates.
pub const NAME_PREFIX: &str = "tdm-";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A fresh, process-unique prefix for one lab: `tdm-<pid>-<n>-`.
pub fn unique_prefix() -> String {
    let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}-", std::process::id())
}

/// Names of existing namespaces that start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Whether `name` (a namespace or directory named `tdm-<pid>-…`) belongs to a lab process that
/// no longer exists.
pub(crate) fn of_dead_lab(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Deletes namespaces left behind by lab processes that no longer exist (e.g. SIGKILLed runs).
pub fn reap_stale() {
    for name in namespaces_with_prefix(NAME_PREFIX) {
        if of_dead_lab(&name) {
            kill_pids_in(&name);
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// SIGKILLs every process still running inside namespace `name`.
fn kill_pids_in(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs a command on the host and returns its stdout; a non-zero exit is an error with stderr.
pub fn run_host<I, S>(program: &str, args: I) -> Result<String, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    checked(cmd)
}

/// Runs `cmd`, turning a spawn failure or a non-zero exit into an [`Error::Command`].
pub fn checked(mut cmd: Command) -> Result<String, Error> {
    let desc = describe(&cmd);
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Spawn(desc.clone(), e))?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: desc,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A shell-like rendering of a command, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    role: String,
}

impl Netns {
    /// Creates namespace `<prefix><role>` with `lo` up, reverse-path filtering off (the lab routes
    /// asymmetrically during failover) and IPv6 DAD off (addresses are usable at once).
    pub fn new(prefix: &str, role: &str) -> Result<Self, Error> {
        let name = format!("{prefix}{role}");
        run_host("ip", ["netns", "add", &name])?;
        let ns = Netns {
            name,
            role: role.to_string(),
        };
        ns.ip(["link", "set", "lo", "up"])?;
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    /// The full namespace name (`tdm-<pid>-<n>-<role>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role part of the name (`office`, `cgw`, …).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// A `Command` that runs `program` inside this namespace (`ip netns exec`, which execs, so the
    /// spawned child's pid is the program's own).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args…` inside the namespace; returns stdout or an error with stderr.
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        checked(cmd)
    }

    /// `ip …` inside the namespace (uses `ip -n`, no exec needed).
    pub fn ip<I, S>(&self, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        checked(cmd)
    }

    /// `ip …` from a whitespace-separated string, for brevity in topology code.
    pub fn ipw(&self, args: &str) -> Result<String, Error> {
        self.ip(args.split_whitespace())
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        self.run("sysctl", ["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Turns on IPv4 and IPv6 forwarding.
    pub fn enable_forwarding(&self) -> Result<(), Error> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<(), Error> {
        use std::io::Write;
        let mut cmd = self.command("nft");
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let desc = format!("{} <<< {ruleset}", describe(&cmd));
        let mut child = cmd.spawn().map_err(|e| Error::Spawn(desc.clone(), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ruleset.as_bytes())
                .map_err(|e| Error::Spawn(desc.clone(), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Spawn(desc.clone(), e))?;
        if !out.status.success() {
            return Err(Error::Command {
                cmd: desc,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                stdout: String::new(),
            });
        }
        Ok(())
    }

    /// Reads one of the kernel's SNMP counters (`/proc/net/snmp`, e.g. `Udp`, `InCsumErrors`).
    pub fn snmp_counter(&self, proto: &str, field: &str) -> Result<u64, Error> {
        let text = self.run("cat", ["/proc/net/snmp"])?;
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{proto}:")))
            .collect();
        if rows.len() >= 2 {
            let names: Vec<&str> = rows[0].split_whitespace().collect();
            let vals: Vec<&str> = rows[1].split_whitespace().collect();
            if let Some(i) = names.iter().position(|n| *n == field) {
                if let Some(v) = vals.get(i).and_then(|v| v.parse().ok()) {
                    return Ok(v);
                }
            }
        }
        Err(Error::Parse(format!(
            "no {proto} {field} in /proc/net/snmp"
        )))
    }
}

impl Netns {
    /// The packet counters of `iface` (`ip -s -j link show`): `(rx_packets, tx_packets)`. An error,
    /// never a zero, when the interface or a counter is missing.
    pub fn link_packets(&self, iface: &str) -> Result<(u64, u64), Error> {
        let text = self.ip(["-s", "-j", "link", "show", "dev", iface])?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Parse(format!("ip -s -j link show {iface}: {e}: {text}")))?;
        let stats = &v[0]["stats64"];
        let get = |dir: &str| {
            stats[dir]["packets"].as_u64().ok_or_else(|| {
                Error::Parse(format!(
                    "no {dir} packets for {iface} in {}: {text}",
                    self.name
                ))
            })
        };
        Ok((get("rx")?, get("tx")?))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_pids_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Creates a veth pair with end `a_name` in `a` and `b_name` in `b`, both up. Names only need to
/// be unique inside their own namespace: the pair is created inside `a`, never on the host.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<(), Error> {
    a.ip([
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.ip(["link", "set", a_name, "up"])?;
    b.ip(["link", "set", b_name, "up"])?;
    Ok(())
}
