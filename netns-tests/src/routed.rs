//! The lab in route-based mode (docs/routing.md): each tunnel an interface with an inside /30,
//! and the tools to watch what the kernel and a routing daemon make of it: carriers, link
//! events and route changes (`ip monitor`, event-driven, so watching does not compete with the
//! daemons for the CPU).
//!
//! Inside addresses follow AWS's shape: tunnel `n` (1, 2) is 169.254.100.(4(n-1))/30, the
//! customer gateway `.1`/`.5`, the head-end `.2`/`.6`; the BGP neighbour of a tunnel is the
//! other host of its /30.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::Error;
use crate::frr::{BgpConfig, Frr, Neighbor};
use crate::netns::Netns;
use crate::tandem::{CONNECTION, Daemon, Side, TandemOpts, TandemPair, TandemSetup};
use crate::topo::{Family, Lab, office_net, vpc_net};

/// Interface name of tunnel `n` on either side (the default `<connection>-<tunnel>`).
pub fn ifname(n: u8) -> String {
    format!("{CONNECTION}-tunnel{n}")
}

/// `side`'s inside address of tunnel `n` (1 or 2).
pub fn inside(side: Side, n: u8) -> Ipv4Addr {
    let base = 4 * (n - 1);
    Ipv4Addr::new(169, 254, 100, base + if side == Side::Cgw { 1 } else { 2 })
}

/// The AS of each side (AWS: the customer picks one, the virtual private gateway has 64512).
pub fn asn(side: Side) -> u32 {
    match side {
        Side::Cgw => 65000,
        _ => 64512,
    }
}

/// Turns the lab config of `side` route-based: `routing = "interfaces"`, both selectors
/// `0.0.0.0/0` and `::/0` (the BGP set-up), an inside /30 per tunnel.
pub fn make_route_based(setup: &TandemSetup, side: Side) -> Result<(), Error> {
    setup.edit_config(side, |text| {
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("local_subnets") {
                out += "local_subnets = [\"0.0.0.0/0\", \"::/0\"]\n";
            } else if line.starts_with("remote_subnets") {
                out += "remote_subnets = [\"0.0.0.0/0\", \"::/0\"]\nrouting = \"interfaces\"\n";
            } else if let Some(n) = line
                .strip_prefix("priority = ")
                .and_then(|n| n.trim().parse::<u8>().ok())
            {
                out += &format!("{line}\ninside = \"{}/30\"\n", inside(side, n));
            } else {
                out += line;
                out.push('\n');
            }
        }
        out
    })
}

/// How the two tunnels share the traffic under BGP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BgpShape {
    /// Active-standby: each side prepends its AS `n` times on what it announces over tunnel2.
    Prepend(u8),
    /// Active-active: equal paths, ECMP over both tunnels (`maximum-paths 2`).
    Ecmp,
}

/// The BGP config of `side` in the lab: eBGP over both tunnels' inside /30s, announcing its
/// LAN (IPv4), with `keepalive`/`hold` on every session.
pub fn lab_bgp(side: Side, shape: BgpShape, keepalive: Duration, hold: Duration) -> BgpConfig {
    let (peer, net) = match side {
        Side::Cgw => (Side::Vpcgw, office_net(Family::V4)),
        _ => (Side::Cgw, vpc_net(Family::V4)),
    };
    let neighbors = [1u8, 2]
        .iter()
        .map(|&n| Neighbor {
            prepend: match shape {
                BgpShape::Prepend(k) if n == 2 => k,
                _ => 0,
            },
            keepalive,
            hold,
            ..Neighbor::aws(IpAddr::V4(inside(peer, n)), asn(peer))
        })
        .collect();
    BgpConfig {
        asn: asn(side),
        router_id: inside(side, 1),
        networks: vec![net.to_owned()],
        neighbors,
        maximum_paths: match shape {
            BgpShape::Prepend(_) => 1,
            BgpShape::Ecmp => 2,
        },
    }
}

/// `/sys/class/net/IF/carrier` inside `ns` ("1", "0", or the error).
pub fn carrier(ns: &Netns, ifname: &str) -> String {
    ns.run("cat", [format!("/sys/class/net/{ifname}/carrier")])
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// Waits until `ifname`'s carrier in `ns` reads `want` ("1" or "0").
pub fn wait_carrier(ns: &Netns, ifname: &str, want: &str, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let c = carrier(ns, ifname);
        if c == want {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout(format!(
                "{} {ifname}: carrier {c}, expected {want} within {timeout:?}",
                ns.role()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Watches `ip monitor OBJECT` inside a namespace and reports when the first line matching a
/// predicate appears: an event-driven timestamp of a kernel change (a link losing its carrier,
/// a route moving to another interface).
#[derive(Debug)]
pub struct Monitor {
    child: Child,
    hit: Receiver<(Instant, String)>,
}

impl Monitor {
    /// Starts `ip monitor OBJECT` (`link`, `route`) in `ns`; `matches` sees each line.
    pub fn start(
        ns: &Netns,
        object: &str,
        matches: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Self, Error> {
        let mut child = ns
            .command("ip")
            .args(["monitor", object])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Spawn(format!("ip monitor {object}"), e))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Parse("ip monitor: no stdout".into()))?;
        let (tx, hit) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if matches(&line) {
                    let _ = tx.send((Instant::now(), line));
                    return;
                }
            }
        });
        Ok(Monitor { child, hit })
    }

    /// The first report of `ifname` without carrier.
    pub fn carrier_off(ns: &Netns, ifname: &str) -> Result<Self, Error> {
        let needle = format!(": {ifname}:");
        Self::start(ns, "link", move |l| {
            l.contains(&needle) && l.contains("NO-CARRIER")
        })
    }

    /// The first route for `prefix` added through `dev` (as zebra does when BGP moves the
    /// prefix to that interface).
    pub fn route_via(ns: &Netns, prefix: &str, dev: &str) -> Result<Self, Error> {
        let (prefix, dev) = (prefix.to_owned(), dev.to_owned());
        Self::start(ns, "route", move |l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&prefix.as_str())
                && w.windows(2).any(|p| p[0] == "dev" && p[1] == dev)
        })
    }

    /// When the matching line came, measured from `t0`, and the line; None after `timeout`.
    pub fn wait(mut self, t0: Instant, timeout: Duration) -> Option<(Duration, String)> {
        let r = self
            .hit
            .recv_timeout(timeout)
            .ok()
            .map(|(t, line)| (t.saturating_duration_since(t0), line));
        let _ = self.child.kill();
        let _ = self.child.wait();
        r
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The interface the kernel of `ns` uses for `dst` (`ip route get`), e.g. to learn which
/// tunnel a flow takes; `from`/ports select the ECMP hash inputs (`fib_multipath_hash_policy`).
pub fn route_dev(
    ns: &Netns,
    dst: IpAddr,
    flow: Option<(IpAddr, &str, u16, u16)>,
) -> Result<String, Error> {
    let mut args = vec!["route".to_owned(), "get".into(), dst.to_string()];
    if let Some((src, iif, sport, dport)) = flow {
        args.extend([
            "from".into(),
            src.to_string(),
            "iif".into(),
            iif.into(),
            "ipproto".into(),
            "udp".into(),
            "sport".into(),
            sport.to_string(),
            "dport".into(),
            dport.to_string(),
        ]);
    }
    let out = ns.ip(&args)?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            return words
                .next()
                .map(str::to_owned)
                .ok_or_else(|| Error::Parse(format!("ip route get: {out}")));
        }
    }
    Err(Error::Parse(format!(
        "ip route get {dst}: no dev in {out:?}"
    )))
}

/// Both gateways of a [`Lab`] running tandem route-based, with FRR (zebra + bgpd) on each side
/// speaking eBGP over both tunnels ([`lab_bgp`]).
#[derive(Debug)]
pub struct BgpPair {
    /// The daemons (dropped after FRR).
    pub tandem: TandemPair,
    /// FRR on `cgw`.
    pub cgw: Frr,
    /// FRR on `vpcgw`.
    pub vpcgw: Frr,
}

impl BgpPair {
    /// Starts tandem (route-based) on both gateways, waits until both tunnels are Up and the
    /// SAs settled, then starts FRR with `shape` and the BGP `keepalive`/`hold` on both sides
    /// (`zebra`: extra zebra config for both) and waits until all four sessions are
    /// Established.
    pub fn start(
        lab: &Lab,
        opts: TandemOpts,
        shape: BgpShape,
        keepalive: Duration,
        hold: Duration,
        zebra: &str,
    ) -> Result<Self, Error> {
        let setup = TandemSetup::new(opts)?;
        make_route_based(&setup, Side::Cgw)?;
        make_route_based(&setup, Side::Vpcgw)?;
        let vpcgw = Daemon::start(&setup, Side::Vpcgw, &lab.vpcgw)?;
        let cgw = Daemon::start(&setup, Side::Cgw, &lab.cgw)?;
        let tandem = TandemPair {
            setup,
            cgw,
            vpcgw,
            vpcgw2: None,
        };
        tandem.wait_both_up(Duration::from_secs(10))?;
        // The head-end's retried initiation completes as a rekey about a second after start.
        tandem.wait_settled(Duration::from_millis(1500), Duration::from_secs(8))?;
        let cgw = Frr::start_with(&lab.cgw, &lab_bgp(Side::Cgw, shape, keepalive, hold), zebra)?;
        let vpcgw = Frr::start_with(
            &lab.vpcgw,
            &lab_bgp(Side::Vpcgw, shape, keepalive, hold),
            zebra,
        )?;
        let pair = BgpPair { tandem, cgw, vpcgw };
        pair.wait_established(Duration::from_secs(20))?;
        Ok(pair)
    }

    /// Waits until both sessions on both sides are Established.
    pub fn wait_established(&self, timeout: Duration) -> Result<(), Error> {
        let peers = |side| [1, 2].map(|n| IpAddr::V4(inside(side, n)));
        self.cgw.wait_established(&peers(Side::Vpcgw), timeout)?;
        self.vpcgw.wait_established(&peers(Side::Cgw), timeout)
    }

    /// The state of tunnel `n`'s BGP session as `side` sees it.
    pub fn session(&self, side: Side, n: u8) -> Result<String, Error> {
        match side {
            Side::Cgw => self.cgw.session_state(IpAddr::V4(inside(Side::Vpcgw, n))),
            _ => self.vpcgw.session_state(IpAddr::V4(inside(Side::Cgw, n))),
        }
    }
}

/// Waits until the kernel of `ns` routes `dst` through `dev` (`ip route get`).
pub fn wait_route_dev(ns: &Netns, dst: IpAddr, dev: &str, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let got = route_dev(ns, dst, None);
        if got.as_deref().ok() == Some(dev) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout(format!(
                "{}: {dst} via {got:?}, expected {dev} within {timeout:?}: {}",
                ns.role(),
                ns.ipw("route show").unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nftables counters in a namespace of the UDP packets it forwards, per (port, output
/// interface): which interface each flow of a set of known ports really takes (the kernel's
/// ECMP hash of a forwarded packet may use the sending socket's random flow hash, which `ip
/// route get` cannot know). The table is deleted on drop.
#[derive(Debug)]
pub struct FlowCounters<'a> {
    ns: &'a Netns,
    table: String,
    keys: Vec<(u16, String)>,
}

impl<'a> FlowCounters<'a> {
    /// Counts forwarded UDP packets whose `field` (`sport` or `dport`) is one of `ports`, per
    /// output interface in `devs`.
    pub fn install(
        ns: &'a Netns,
        table: &str,
        field: &str,
        ports: &[u16],
        devs: &[String],
    ) -> Result<Self, Error> {
        let mut rules = String::new();
        let mut keys = Vec::new();
        for &p in ports {
            for d in devs {
                rules += &format!(
                    "    oifname \"{d}\" udp {field} {p} counter comment \"flow {p} {d}\"\n"
                );
                keys.push((p, d.clone()));
            }
        }
        ns.nft(&format!(
            "table inet {table} {{\n  chain count {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        ))?;
        Ok(FlowCounters {
            ns,
            table: table.to_owned(),
            keys,
        })
    }

    /// Packets counted for `(port, dev)`; every installed counter must be found (a missing one
    /// is an error, never 0).
    pub fn read(&self) -> Result<std::collections::HashMap<(u16, String), u64>, Error> {
        let text = self.ns.run("nft", ["list", "table", "inet", &self.table])?;
        let mut out = std::collections::HashMap::new();
        for line in text.lines() {
            let Some((_, comment)) = line.split_once("comment \"flow ") else {
                continue;
            };
            let mut c = comment.trim_end_matches('"').split_whitespace();
            let (Some(port), Some(dev)) = (c.next().and_then(|p| p.parse().ok()), c.next()) else {
                continue;
            };
            let packets = line
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| Error::Parse(format!("nft counter line {line:?}")))?;
            out.insert((port, dev.to_owned()), packets);
        }
        for k in &self.keys {
            if !out.contains_key(k) {
                return Err(Error::Parse(format!(
                    "nft counter {k:?} missing in {}:\n{text}",
                    self.ns.role()
                )));
            }
        }
        Ok(out)
    }
}

impl Drop for FlowCounters<'_> {
    fn drop(&mut self) {
        let _ = self.ns.run("nft", ["delete", "table", "inet", &self.table]);
    }
}
