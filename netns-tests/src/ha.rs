//! An HA pair of office gateways (docs/routing.md, "HA pair"), IPv4:
//!
//! ```text
//!  office ── orouter ══ br0 (10.10.0.0/24) ══ cgwa ══ isp1 ══ vpcgw ── vpc
//! 10.10.1.10  AS 65010   ╲                 ╲═ cgwb ══ isp2 ══╱  AS 64512
//!                         (cgwa .2, cgwb .3)   AS 65000
//! ```
//!
//! `cgwa` and `cgwb` each run tandem route-based with their own two tunnels (over isp1 and
//! isp2) to the one head-end `vpcgw`, which has a connection per office gateway (four tunnels,
//! four interfaces, one port per ISP). FRR everywhere: each office gateway speaks eBGP over its
//! two tunnels' inside /30s to `vpcgw` and over the office LAN to `orouter`, the office router.
//! `orouter` announces the office subnet, `vpcgw` the VPC's; `cgwb` prepends on everything it
//! announces, so `cgwa` carries the traffic while it can and `cgwb` takes all of it when it
//! cannot. The gateways share no state: a flow that moves re-routes, nothing else.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::Error;
use crate::frr::{BgpConfig, Frr, Neighbor};
use crate::netns::{Netns, reap_stale, unique_prefix, veth};
use crate::tandem::{Daemon, Side, TandemOpts, TempDir, tandem_cmd, write_private};

/// The office host.
pub const OFFICE_HOST: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 10);
/// The VPC host.
pub const VPC_HOST: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 10);
/// The prefix `orouter` announces.
pub const OFFICE_NET: &str = "10.10.1.0/24";
/// The prefix `vpcgw` announces.
pub const VPC_NET: &str = "10.20.0.0/24";

/// One of the office gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gw {
    /// `cgwa`, preferred.
    A,
    /// `cgwb`, the backup (prepends).
    B,
}

impl Gw {
    /// Both.
    pub const BOTH: [Gw; 2] = [Gw::A, Gw::B];

    /// `cgwa` / `cgwb` (also the head-end's connection names).
    pub fn name(self) -> &'static str {
        match self {
            Gw::A => "cgwa",
            Gw::B => "cgwb",
        }
    }

    fn index(self) -> u8 {
        match self {
            Gw::A => 0,
            Gw::B => 1,
        }
    }

    /// Its address on the ISP `isp` (1 or 2) and on the office LAN.
    pub fn wan(self, isp: u8) -> Ipv4Addr {
        let host = 1 + 2 * self.index();
        match isp {
            1 => Ipv4Addr::new(192, 0, 2, host),
            _ => Ipv4Addr::new(198, 51, 100, host),
        }
    }

    /// Its address on the office LAN (towards `orouter`).
    pub fn lan(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 10, 0, 2 + self.index())
    }

    /// The inside address of its tunnel `n` on its own side (`head_end`: on the head-end's).
    pub fn inside(self, n: u8, head_end: bool) -> Ipv4Addr {
        let net = 8 * self.index() + 4 * (n - 1);
        Ipv4Addr::new(169, 254, 100, net + if head_end { 2 } else { 1 })
    }
}

/// The head-end's address on ISP `isp`.
pub fn vpcgw_wan(isp: u8) -> Ipv4Addr {
    match isp {
        1 => Ipv4Addr::new(192, 0, 2, 2),
        _ => Ipv4Addr::new(198, 51, 100, 2),
    }
}

/// The interface of the head-end for `gw`'s tunnel `n` (default `<connection>-<tunnel>`).
pub fn head_end_if(gw: Gw, n: u8) -> String {
    format!("{}-tunnel{n}", gw.name())
}

/// The interface of an office gateway for its tunnel `n`.
pub fn gw_if(n: u8) -> String {
    format!("vpc-tunnel{n}")
}

/// The namespaces, torn down on drop.
#[derive(Debug)]
pub struct HaLab {
    /// The office host (10.10.1.10).
    pub office: Netns,
    /// The office router (AS 65010).
    pub orouter: Netns,
    /// Office gateway A.
    pub cgwa: Netns,
    /// Office gateway B.
    pub cgwb: Netns,
    /// Provider 1.
    pub isp1: Netns,
    /// Provider 2.
    pub isp2: Netns,
    /// The head-end.
    pub vpcgw: Netns,
    /// The VPC host (10.20.0.10).
    pub vpc: Netns,
}

fn ip(ns: &Netns, args: &str) -> Result<(), Error> {
    ns.ipw(args).map(|_| ())
}

impl HaLab {
    /// Builds the namespaces, links, addresses and the ISPs' routes (no route across yet: BGP
    /// brings them).
    pub fn new() -> Result<Self, Error> {
        reap_stale();
        let p = unique_prefix();
        let lab = HaLab {
            office: Netns::new(&p, "office")?,
            orouter: Netns::new(&p, "orouter")?,
            cgwa: Netns::new(&p, "cgwa")?,
            cgwb: Netns::new(&p, "cgwb")?,
            isp1: Netns::new(&p, "isp1")?,
            isp2: Netns::new(&p, "isp2")?,
            vpcgw: Netns::new(&p, "vpcgw")?,
            vpc: Netns::new(&p, "vpc")?,
        };
        for ns in [
            &lab.orouter,
            &lab.cgwa,
            &lab.cgwb,
            &lab.isp1,
            &lab.isp2,
            &lab.vpcgw,
        ] {
            ns.enable_forwarding()?;
        }
        // office -- orouter
        veth(&lab.office, "eth0", &lab.orouter, "office")?;
        ip(&lab.office, "addr add 10.10.1.10/24 dev eth0")?;
        ip(&lab.office, "route add default via 10.10.1.1")?;
        ip(&lab.orouter, "addr add 10.10.1.1/24 dev office")?;
        // orouter's LAN bridge -- both gateways
        ip(&lab.orouter, "link add br0 type bridge")?;
        ip(&lab.orouter, "link set br0 up")?;
        ip(&lab.orouter, "addr add 10.10.0.1/24 dev br0")?;
        for gw in Gw::BOTH {
            let port = format!("to{}", gw.name());
            veth(lab.gw(gw), "lan", &lab.orouter, &port)?;
            ip(&lab.orouter, &format!("link set {port} master br0"))?;
            ip(lab.gw(gw), &format!("addr add {}/24 dev lan", gw.lan()))?;
        }
        // ISPs: a router (.254 on every link) between all gateways' WAN addresses.
        for isp in [1u8, 2] {
            let isp_ns = if isp == 1 { &lab.isp1 } else { &lab.isp2 };
            let router = if isp == 1 {
                "192.0.2.254"
            } else {
                "198.51.100.254"
            };
            let mut ends: Vec<(&Netns, &str, Ipv4Addr)> = Gw::BOTH
                .iter()
                .map(|&g| (lab.gw(g), g.name(), g.wan(isp)))
                .collect();
            ends.push((&lab.vpcgw, "vpcgw", vpcgw_wan(isp)));
            for (ns, name, addr) in &ends {
                let up = format!("isp{isp}");
                veth(ns, &up, isp_ns, name)?;
                ip(ns, &format!("addr add {addr}/24 dev {up}"))?;
                ip(isp_ns, &format!("addr add {router}/32 dev {name}"))?;
                ip(isp_ns, &format!("route add {addr}/32 dev {name}"))?;
                for (_, _, other) in ends.iter().filter(|(_, n, _)| n != name) {
                    ip(ns, &format!("route add {other}/32 via {router} dev {up}"))?;
                }
            }
        }
        // vpcgw -- vpc
        veth(&lab.vpcgw, "lan", &lab.vpc, "eth0")?;
        ip(&lab.vpcgw, "addr add 10.20.0.1/24 dev lan")?;
        ip(&lab.vpc, "addr add 10.20.0.10/24 dev eth0")?;
        ip(&lab.vpc, "route add default via 10.20.0.1")?;
        Ok(lab)
    }

    /// Office gateway `gw`'s namespace.
    pub fn gw(&self, gw: Gw) -> &Netns {
        match gw {
            Gw::A => &self.cgwa,
            Gw::B => &self.cgwb,
        }
    }
}

/// tandem on the three gateways, route-based, plus FRR on the four routers.
#[derive(Debug)]
pub struct HaPair {
    // Routing daemons first (dropped first), then tandem, then the directory.
    /// FRR on `orouter`.
    pub frr_orouter: Frr,
    /// FRR on `cgwa`, `cgwb`.
    pub frr_gw: [Frr; 2],
    /// FRR on `vpcgw`.
    pub frr_vpcgw: Frr,
    /// tandem on `cgwa`, `cgwb`.
    pub gw: [Daemon; 2],
    /// tandem on `vpcgw` (a connection per office gateway).
    pub vpcgw: Daemon,
    dir: TempDir,
}

fn dur(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn tunnel(
    d: &str,
    n: u8,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    peer: &str,
    psk: &str,
    inside: Ipv4Addr,
) -> String {
    format!(
        "\n[[connection.tunnel]]\nname = \"tunnel{n}\"\nlocal = \"{local}:4500\"\nremote = \"{remote}:4500\"\n\
         peer_public_key = \"{peer}\"\npsk_file = \"{d}/{psk}.psk\"\npriority = {n}\ninside = \"{inside}/30\"\n"
    )
}

fn connection(name: &str, o: &TandemOpts) -> String {
    format!(
        "\n[[connection]]\nname = \"{name}\"\nrouting = \"interfaces\"\n\
         local_subnets = [\"0.0.0.0/0\"]\nremote_subnets = [\"0.0.0.0/0\"]\n\
         dpd_interval = \"{}\"\ndpd_timeout = \"{}\"\n",
        dur(o.dpd_interval),
        dur(o.dpd_timeout)
    )
}

impl HaPair {
    /// Writes keys, PSKs and configs, starts tandem on the three gateways (waits until every
    /// tunnel is Up), then FRR on all four routers (waits until every session is Established).
    pub fn start(lab: &HaLab, opts: &TandemOpts) -> Result<Self, Error> {
        let dir = TempDir::new("ha")?;
        let d = dir.path().display().to_string();
        let mut pubs = Vec::new();
        for name in ["cgwa", "cgwb", "vpcgw"] {
            let key = tandem_cmd(&["genkey"], None)?;
            write_private(&dir.path().join(format!("{name}.key")), &key)?;
            pubs.push(tandem_cmd(&["pubkey"], Some(&key))?.trim().to_owned());
        }
        let head = |name: &str| {
            format!(
                "[gateway]\nprivate_key_file = \"{d}/{name}.key\"\ntun_name = \"tandem0\"\nmtu = 1400\n\
                 \n[control]\nsocket = \"{d}/{name}.sock\"\n"
            )
        };
        let mut he = head("vpcgw");
        for gw in Gw::BOTH {
            let mut text = head(gw.name()) + &connection("vpc", opts);
            he += &connection(gw.name(), opts);
            for n in [1u8, 2] {
                let psk = format!("{}-tunnel{n}", gw.name());
                write_private(
                    &dir.path().join(format!("{psk}.psk")),
                    &tandem_cmd(&["genpsk"], None)?,
                )?;
                text += &tunnel(
                    &d,
                    n,
                    gw.wan(n),
                    vpcgw_wan(n),
                    &pubs[2],
                    &psk,
                    gw.inside(n, false),
                );
                he += &tunnel(
                    &d,
                    n,
                    vpcgw_wan(n),
                    gw.wan(n),
                    &pubs[usize::from(gw.index())],
                    &psk,
                    gw.inside(n, true),
                );
            }
            write_private(&dir.path().join(format!("{}.toml", gw.name())), &text)?;
        }
        write_private(&dir.path().join("vpcgw.toml"), &he)?;
        let env = [("RUST_LOG".to_owned(), opts.log.to_owned())];
        let start = |ns: &Netns, name: &str, side: Side| {
            let p = |ext: &str| dir.path().join(format!("{name}.{ext}"));
            Daemon::start_files(ns, side, &p("toml"), &p("sock"), &p("log"), &env)
        };
        let vpcgw = start(&lab.vpcgw, "vpcgw", Side::Vpcgw)?;
        let gw = [
            start(&lab.cgwa, "cgwa", Side::Cgw)?,
            start(&lab.cgwb, "cgwb", Side::Cgw)?,
        ];
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let all = gw
                .iter()
                .chain([&vpcgw])
                .all(|d| d.status().is_ok_and(|s| s.every_tunnel_up()));
            if all {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "HA pair tunnels not Up: vpcgw log:\n{}",
                    vpcgw.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        // BGP: AWS timers on the tunnels, short ones on the office LAN.
        let aws = |addr: Ipv4Addr, asn: u32, prepend: u8| Neighbor {
            prepend,
            ..Neighbor::aws(IpAddr::V4(addr), asn)
        };
        let lan = |addr: Ipv4Addr, asn: u32, prepend: u8| Neighbor {
            prepend,
            keepalive: Duration::from_secs(1),
            hold: Duration::from_secs(3),
            ..Neighbor::aws(IpAddr::V4(addr), asn)
        };
        let frr_orouter = Frr::start(
            &lab.orouter,
            &BgpConfig {
                asn: 65010,
                router_id: Ipv4Addr::new(10, 10, 0, 1),
                networks: vec![OFFICE_NET.into()],
                neighbors: Gw::BOTH.iter().map(|g| lan(g.lan(), 65000, 0)).collect(),
                maximum_paths: 1,
            },
        )?;
        let gw_bgp = |g: Gw| {
            let prepend = if g == Gw::B { 2 } else { 0 };
            let mut neighbors = vec![lan(Ipv4Addr::new(10, 10, 0, 1), 65010, prepend)];
            for n in [1u8, 2] {
                // Within a gateway, tunnel2 is the standby (prepended once more).
                neighbors.push(aws(g.inside(n, true), 64512, prepend + n - 1));
            }
            BgpConfig {
                asn: 65000,
                router_id: g.lan(),
                networks: Vec::new(),
                neighbors,
                maximum_paths: 1,
            }
        };
        let frr_gw = [
            Frr::start(&lab.cgwa, &gw_bgp(Gw::A))?,
            Frr::start(&lab.cgwb, &gw_bgp(Gw::B))?,
        ];
        let frr_vpcgw = Frr::start(
            &lab.vpcgw,
            &BgpConfig {
                asn: 64512,
                router_id: Ipv4Addr::new(10, 20, 0, 1),
                networks: vec![VPC_NET.into()],
                neighbors: Gw::BOTH
                    .iter()
                    .flat_map(|&g| [1u8, 2].map(|n| aws(g.inside(n, false), 65000, 0)))
                    .collect(),
                maximum_paths: 1,
            },
        )?;
        let pair = HaPair {
            frr_orouter,
            frr_gw,
            frr_vpcgw,
            gw,
            vpcgw,
            dir,
        };
        let t = Duration::from_secs(30);
        for g in Gw::BOTH {
            pair.frr_gw[usize::from(g.index())].wait_established(
                &[
                    IpAddr::V4(Ipv4Addr::new(10, 10, 0, 1)),
                    IpAddr::V4(g.inside(1, true)),
                    IpAddr::V4(g.inside(2, true)),
                ],
                t,
            )?;
        }
        Ok(pair)
    }

    /// The tails of every daemon's log (tandem and bgpd), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, d) in [
            ("cgwa", &self.gw[0]),
            ("cgwb", &self.gw[1]),
            ("vpcgw", &self.vpcgw),
        ] {
            out += &format!("--- tandem {name}:\n{}\n", d.log_tail(15));
        }
        for (name, f) in [
            ("cgwa", &self.frr_gw[0]),
            ("cgwb", &self.frr_gw[1]),
            ("vpcgw", &self.frr_vpcgw),
            ("orouter", &self.frr_orouter),
        ] {
            out += &format!("--- bgpd {name}:\n{}\n", f.log_tail("bgpd", 12));
        }
        out
    }

    /// The directory with configs and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
