//! FRR (zebra + bgpd from the distribution, `apt-get install frr`) inside a lab namespace, as a
//! real routing daemon next to tandem's route-based interfaces (docs/routing.md).
//!
//! Each instance gets its own directory (configs, pid files, the zebra API socket, the vty
//! sockets `vtysh --vty_socket` talks to, logs), owned by the `frr` user the package creates,
//! so nothing touches `/etc/frr` or `/run/frr` and no host FRR service is involved. The daemons
//! are killed on drop (their namespace goes away with the lab).
//!
//! [`BgpConfig`] writes a `bgpd.conf` for the shape the lab needs: one AS, the networks it
//! announces, eBGP neighbours with their timers and an optional AS-path prepend (active-standby
//! by prepending on the backup tunnel, as AWS documents), and `maximum-paths` for ECMP.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Error;
use crate::netns::{Netns, checked};
use crate::process::Bg;

/// Where the distribution installs the daemons.
const FRR_LIB: &str = "/usr/lib/frr";

/// Whether FRR's zebra and bgpd are installed (the lab tests need them; CI installs `frr`).
pub fn installed() -> bool {
    Path::new(FRR_LIB).join("bgpd").exists() && Path::new(FRR_LIB).join("zebra").exists()
}

/// One eBGP neighbour.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbor {
    /// Its address (the other host of a tunnel's inside /30).
    pub addr: IpAddr,
    /// Its AS.
    pub remote_as: u32,
    /// How many times our AS is prepended to what we announce to it (0: none).
    pub prepend: u8,
    /// Keepalive interval (AWS: 10 s).
    pub keepalive: Duration,
    /// Hold time (AWS: 30 s).
    pub hold: Duration,
}

impl Neighbor {
    /// A neighbour with AWS's timers (keepalive 10 s, hold 30 s) and no prepend.
    pub fn aws(addr: IpAddr, remote_as: u32) -> Self {
        Neighbor {
            addr,
            remote_as,
            prepend: 0,
            keepalive: Duration::from_secs(10),
            hold: Duration::from_secs(30),
        }
    }
}

/// A `bgpd.conf`.
#[derive(Debug, Clone, PartialEq)]
pub struct BgpConfig {
    /// Our AS.
    pub asn: u32,
    /// `bgp router-id`.
    pub router_id: Ipv4Addr,
    /// Prefixes announced with `network` (they must be in the RIB: a connected LAN).
    pub networks: Vec<String>,
    /// eBGP neighbours.
    pub neighbors: Vec<Neighbor>,
    /// `maximum-paths` (1: one best path; 2+: ECMP over that many neighbours).
    pub maximum_paths: u8,
}

impl BgpConfig {
    /// The config text. Every neighbour retries its connection every second (`timers connect
    /// 1`: FRR's default of 120 s would leave a healed tunnel unused for minutes), and has an
    /// inbound and outbound route map (eBGP needs a policy in FRR 8).
    pub fn render(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "hostname bgpd\nlog timestamp precision 3\n!");
        let _ = writeln!(t, "router bgp {}", self.asn);
        let _ = writeln!(t, " bgp router-id {}", self.router_id);
        // Paths from different neighbouring ASes may share ECMP (the HA pair's two gateways).
        let _ = writeln!(t, " bgp bestpath as-path multipath-relax");
        for n in &self.neighbors {
            let _ = writeln!(t, " neighbor {} remote-as {}", n.addr, n.remote_as);
            let _ = writeln!(
                t,
                " neighbor {} timers {} {}",
                n.addr,
                n.keepalive.as_secs(),
                n.hold.as_secs()
            );
            let _ = writeln!(t, " neighbor {} timers connect 1", n.addr);
        }
        for (af, v4) in [("ipv4", true), ("ipv6", false)] {
            let _ = writeln!(t, " address-family {af} unicast");
            for net in &self.networks {
                if net.contains(':') != v4 {
                    let _ = writeln!(t, "  network {net}");
                }
            }
            for n in self.neighbors.iter().filter(|n| n.addr.is_ipv4() == v4) {
                let _ = writeln!(t, "  neighbor {} activate", n.addr);
                let _ = writeln!(t, "  neighbor {} route-map ALL in", n.addr);
                let _ = writeln!(t, "  neighbor {} route-map {} out", n.addr, out_map(n));
            }
            let _ = writeln!(t, "  maximum-paths {}", self.maximum_paths.max(1));
            let _ = writeln!(t, " exit-address-family");
        }
        let _ = writeln!(t, "!\nroute-map ALL permit 10\n!");
        for n in self.neighbors.iter().filter(|n| n.prepend > 0) {
            let path = vec![self.asn.to_string(); usize::from(n.prepend)].join(" ");
            let _ = writeln!(
                t,
                "route-map {} permit 10\n set as-path prepend {path}\n!",
                out_map(n)
            );
        }
        t
    }
}

fn out_map(n: &Neighbor) -> String {
    if n.prepend > 0 {
        format!("PREPEND{}", n.prepend)
    } else {
        "ALL".into()
    }
}

/// zebra + bgpd running in one namespace.
#[derive(Debug)]
pub struct Frr {
    ns: String,
    dir: PathBuf,
    // Dropped (SIGKILL) bgpd first, then zebra.
    bgpd: Bg,
    zebra: Bg,
}

impl Frr {
    /// Starts zebra, then bgpd with `bgp`, inside `ns`.
    pub fn start(ns: &Netns, bgp: &BgpConfig) -> Result<Self, Error> {
        Self::start_with(ns, bgp, "")
    }

    /// As [`Self::start`], with `zebra` appended to zebra's config (e.g. `interface X` /
    /// ` no link-detect`, which makes zebra ignore the link state of X).
    pub fn start_with(ns: &Netns, bgp: &BgpConfig, zebra: &str) -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!("{}-frr", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        let io = |e| Error::Io(dir.display().to_string(), e);
        std::fs::create_dir(&dir).map_err(io)?;
        std::fs::write(dir.join("zebra.conf"), format!("hostname zebra\n{zebra}")).map_err(io)?;
        std::fs::write(dir.join("bgpd.conf"), bgp.render()).map_err(io)?;
        // The daemons drop to the `frr` user; the vty group check wants it too.
        for p in ["", "zebra.conf", "bgpd.conf"] {
            checked({
                let mut c = Command::new("chown");
                c.args(["frr:frr", &dir.join(p).display().to_string()]);
                c
            })?;
        }
        let d = dir.display().to_string();
        let daemon = |name: &str| -> Result<Bg, Error> {
            let mut cmd = ns.command(Path::new(FRR_LIB).join(name));
            cmd.args(["-u", "frr", "-g", "frr", "-P", "0"])
                .args(["-f", &format!("{d}/{name}.conf")])
                .args(["-i", &format!("{d}/{name}.pid")])
                .args(["-z", &format!("{d}/zserv.api")])
                .args(["--vty_socket", &d])
                .args(["--log", &format!("file:{d}/{name}.log")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            Bg::spawn(cmd)
        };
        let zebra = daemon("zebra")?;
        wait_for(&dir.join("zserv.api"), "zebra's API socket")?;
        let bgpd = daemon("bgpd")?;
        let frr = Frr {
            ns: ns.name().to_owned(),
            dir,
            bgpd,
            zebra,
        };
        wait_for(&frr.dir.join("bgpd.vty"), "bgpd's vty socket")?;
        Ok(frr)
    }

    /// Runs one `vtysh -c CMD` against this instance.
    pub fn vtysh(&self, cmd: &str) -> Result<String, Error> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "vtysh", "--vty_socket"])
            .arg(&self.dir)
            .args(["-c", cmd]);
        checked(c)
    }

    /// `show bgp neighbors ADDR json`: the session's state (`Established`, `Active`, …).
    pub fn session_state(&self, addr: IpAddr) -> Result<String, Error> {
        let out = self.vtysh(&format!("show bgp neighbors {addr} json"))?;
        let v: Value = serde_json::from_str(&out)
            .map_err(|e| Error::Parse(format!("bgp neighbor JSON {out:?}: {e}")))?;
        v[addr.to_string()]["bgpState"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Parse(format!("no bgpState for {addr} in {out}")))
    }

    /// Waits until every session in `addrs` is Established.
    pub fn wait_established(&self, addrs: &[IpAddr], timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let states: Vec<String> = addrs
                .iter()
                .map(|a| self.session_state(*a).unwrap_or_else(|e| e.to_string()))
                .collect();
            if states.iter().all(|s| s == "Established") {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "BGP sessions {addrs:?} in {}: {states:?} after {timeout:?}\nbgpd log:\n{}",
                    self.ns,
                    self.log_tail("bgpd", 15)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `n` lines of `zebra`'s or `bgpd`'s log.
    pub fn log_tail(&self, daemon: &str, n: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{daemon}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILLs bgpd and zebra (the routes zebra installed stay in the kernel, as after a crash).
    pub fn kill(&mut self) {
        self.bgpd.kill();
        self.zebra.kill();
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(path: &Path, what: &str) -> Result<(), Error> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Error::Timeout(format!("{what} ({})", path.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
