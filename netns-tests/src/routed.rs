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
use crate::frr::{BgpConfig, Neighbor};
use crate::netns::Netns;
use crate::tandem::{CONNECTION, Side, TandemSetup};
use crate::topo::{Family, office_net, vpc_net};

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
