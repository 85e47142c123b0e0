//! The netns-tests/README.md topology, dual-stack everywhere (IPv4 and IPv6 both as underlay and inner):
//!
//! ```text
//!  office ── cgw ══ isp1 (192.0.2.0/24, 2001:db8:1::/64) ══ vpcgw ── vpc
//!                ╲═ isp2 (198.51.100.0/24, 2001:db8:2::/64) ═╱
//! ```
//!
//! `isp1` and `isp2` are namespaces that route between the two gateways, so impairments (nftables
//! drops, the WAN emulator) sit in the middle of the path, as a provider's network would, and a
//! capture on `isp1` sees exactly the tunnel's wire. Each gateway keeps the documented addresses (netns-tests/README.md) in one
//! /24 (/64) per ISP; the ISP owns `.254` (`::fe`) on both of its links and the gateways reach each
//! other through it with a host route (`192.0.2.2/32 via 192.0.2.254`), so no proxy ARP/NDP is
//! needed. Interfaces are named after their peer (`cgw` has `lan`, `isp1`, `isp2`).
//!
//! [`HeadEnds::Two`] puts tunnel 1 and tunnel 2 on two head-end namespaces (`vpcgw` on isp1,
//! `vpcgw2` on isp2); `vpc` then bridges both head-end LAN links (`br0`, 10.20.0.10) and routes
//! the office via `vpcgw` (10.20.0.1), with `vpcgw2` at 10.20.0.2.

use std::net::IpAddr;

use crate::Error;
use crate::netns::{Netns, reap_stale, unique_prefix, veth};

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// "IPv4" / "IPv6".
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// One of the two providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isp {
    /// isp1: carries tunnel1.
    One,
    /// isp2: carries tunnel2.
    Two,
}

/// One or two head-end namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadEnds {
    /// `vpcgw` ends both tunnels (netns-tests/README.md).
    #[default]
    One,
    /// `vpcgw` ends tunnel1, `vpcgw2` ends tunnel2.
    Two,
}

fn ip(s: &str) -> IpAddr {
    // Only called on the literals below; a typo is a programming error caught by every test.
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// The office host.
pub fn office_ip(f: Family) -> IpAddr {
    ip(match f {
        Family::V4 => "10.10.0.10",
        Family::V6 => "fd00:10::10",
    })
}

/// The VPC host.
pub fn vpc_ip(f: Family) -> IpAddr {
    ip(match f {
        Family::V4 => "10.20.0.10",
        Family::V6 => "fd00:20::10",
    })
}

/// The office subnet.
pub fn office_net(f: Family) -> &'static str {
    match f {
        Family::V4 => "10.10.0.0/24",
        Family::V6 => "fd00:10::/64",
    }
}

/// The VPC subnet.
pub fn vpc_net(f: Family) -> &'static str {
    match f {
        Family::V4 => "10.20.0.0/24",
        Family::V6 => "fd00:20::/64",
    }
}

/// The customer gateway's address on `isp`.
pub fn cgw_wan(isp: Isp, f: Family) -> IpAddr {
    ip(match (isp, f) {
        (Isp::One, Family::V4) => "192.0.2.1",
        (Isp::Two, Family::V4) => "198.51.100.1",
        (Isp::One, Family::V6) => "2001:db8:1::1",
        (Isp::Two, Family::V6) => "2001:db8:2::1",
    })
}

/// The head-end's address on `isp`.
pub fn vpcgw_wan(isp: Isp, f: Family) -> IpAddr {
    ip(match (isp, f) {
        (Isp::One, Family::V4) => "192.0.2.2",
        (Isp::Two, Family::V4) => "198.51.100.2",
        (Isp::One, Family::V6) => "2001:db8:1::2",
        (Isp::Two, Family::V6) => "2001:db8:2::2",
    })
}

fn isp_router(isp: Isp, f: Family) -> IpAddr {
    ip(match (isp, f) {
        (Isp::One, Family::V4) => "192.0.2.254",
        (Isp::Two, Family::V4) => "198.51.100.254",
        (Isp::One, Family::V6) => "2001:db8:1::fe",
        (Isp::Two, Family::V6) => "2001:db8:2::fe",
    })
}

fn plen(f: Family) -> &'static str {
    match f {
        Family::V4 => "24",
        Family::V6 => "64",
    }
}

fn host(f: Family) -> &'static str {
    match f {
        Family::V4 => "32",
        Family::V6 => "128",
    }
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// Interface name for an ISP link on a gateway (`isp1`/`isp2`).
pub fn isp_if(isp: Isp) -> &'static str {
    match isp {
        Isp::One => "isp1",
        Isp::Two => "isp2",
    }
}

/// The lab: six (or seven) namespaces, torn down on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// The office host (10.10.0.10).
    pub office: Netns,
    /// The customer gateway (runs tandem).
    pub cgw: Netns,
    /// Provider 1 (router between the gateways' isp1 links).
    pub isp1: Netns,
    /// Provider 2.
    pub isp2: Netns,
    /// The head-end (runs tandem); with [`HeadEnds::Two`], only tunnel1's end.
    pub vpcgw: Netns,
    /// The second head-end, with [`HeadEnds::Two`].
    pub vpcgw2: Option<Netns>,
    /// The VPC host (10.20.0.10).
    pub vpc: Netns,
}

impl Lab {
    /// Builds the netns-tests/README.md lab with one head-end.
    pub fn new() -> Result<Lab, Error> {
        Self::build(HeadEnds::One)
    }

    /// Builds the lab: namespaces, links, addresses, forwarding, host default routes, ISP routes.
    /// The gateways get no route to the far site: [`Lab::plain_routes`] or tandem adds them.
    pub fn build(head_ends: HeadEnds) -> Result<Lab, Error> {
        reap_stale();
        let prefix = unique_prefix();
        let office = Netns::new(&prefix, "office")?;
        let cgw = Netns::new(&prefix, "cgw")?;
        let isp1 = Netns::new(&prefix, "isp1")?;
        let isp2 = Netns::new(&prefix, "isp2")?;
        let vpcgw = Netns::new(&prefix, "vpcgw")?;
        let vpcgw2 = match head_ends {
            HeadEnds::One => None,
            HeadEnds::Two => Some(Netns::new(&prefix, "vpcgw2")?),
        };
        let vpc = Netns::new(&prefix, "vpc")?;
        let lab = Lab {
            prefix,
            office,
            cgw,
            isp1,
            isp2,
            vpcgw,
            vpcgw2,
            vpc,
        };
        lab.wire()?;
        Ok(lab)
    }

    /// The head-end that ends the tunnel over `isp`.
    pub fn head_end(&self, isp: Isp) -> &Netns {
        match (isp, &self.vpcgw2) {
            (Isp::Two, Some(he2)) => he2,
            _ => &self.vpcgw,
        }
    }

    /// The namespace of provider `isp`.
    pub fn isp(&self, isp: Isp) -> &Netns {
        match isp {
            Isp::One => &self.isp1,
            Isp::Two => &self.isp2,
        }
    }

    fn wire(&self) -> Result<(), Error> {
        for ns in [&self.cgw, &self.isp1, &self.isp2, &self.vpcgw] {
            ns.enable_forwarding()?;
        }
        if let Some(he2) = &self.vpcgw2 {
            he2.enable_forwarding()?;
        }
        // office -- cgw
        veth(&self.office, "eth0", &self.cgw, "lan")?;
        for f in Family::BOTH {
            let gw = match f {
                Family::V4 => "10.10.0.1",
                Family::V6 => "fd00:10::1",
            };
            self.cgw.ip([
                fam(f),
                "addr",
                "add",
                &format!("{gw}/{}", plen(f)),
                "dev",
                "lan",
            ])?;
            self.office.ip([
                fam(f),
                "addr",
                "add",
                &format!("{}/{}", office_ip(f), plen(f)),
                "dev",
                "eth0",
            ])?;
            self.office
                .ip([fam(f), "route", "add", "default", "via", gw])?;
        }
        // gateways -- isps
        for isp in [Isp::One, Isp::Two] {
            let isp_ns = self.isp(isp);
            let he = self.head_end(isp);
            veth(&self.cgw, isp_if(isp), isp_ns, "cgw")?;
            veth(he, isp_if(isp), isp_ns, "vpcgw")?;
            for f in Family::BOTH {
                let r = isp_router(isp, f);
                for (gw, gw_ip, isp_side, far) in [
                    (&self.cgw, cgw_wan(isp, f), "cgw", vpcgw_wan(isp, f)),
                    (he, vpcgw_wan(isp, f), "vpcgw", cgw_wan(isp, f)),
                ] {
                    gw.ip([
                        fam(f),
                        "addr",
                        "add",
                        &format!("{gw_ip}/{}", plen(f)),
                        "dev",
                        isp_if(isp),
                    ])?;
                    gw.ip([
                        fam(f),
                        "route",
                        "add",
                        &format!("{far}/{}", host(f)),
                        "via",
                        &r.to_string(),
                        "dev",
                        isp_if(isp),
                    ])?;
                    isp_ns.ip([
                        fam(f),
                        "addr",
                        "add",
                        &format!("{r}/{}", host(f)),
                        "dev",
                        isp_side,
                    ])?;
                    isp_ns.ip([
                        fam(f),
                        "route",
                        "add",
                        &format!("{gw_ip}/{}", host(f)),
                        "dev",
                        isp_side,
                    ])?;
                }
            }
        }
        // head-end(s) -- vpc
        match &self.vpcgw2 {
            None => {
                veth(&self.vpcgw, "lan", &self.vpc, "eth0")?;
                for f in Family::BOTH {
                    let gw = match f {
                        Family::V4 => "10.20.0.1",
                        Family::V6 => "fd00:20::1",
                    };
                    self.vpcgw.ip([
                        fam(f),
                        "addr",
                        "add",
                        &format!("{gw}/{}", plen(f)),
                        "dev",
                        "lan",
                    ])?;
                    self.vpc.ip([
                        fam(f),
                        "addr",
                        "add",
                        &format!("{}/{}", vpc_ip(f), plen(f)),
                        "dev",
                        "eth0",
                    ])?;
                    self.vpc
                        .ip([fam(f), "route", "add", "default", "via", gw])?;
                }
            }
            Some(he2) => {
                self.vpc.ipw("link add br0 type bridge")?;
                self.vpc.ipw("link set br0 up")?;
                veth(&self.vpcgw, "lan", &self.vpc, "eth1")?;
                veth(he2, "lan", &self.vpc, "eth2")?;
                self.vpc.ipw("link set eth1 master br0")?;
                self.vpc.ipw("link set eth2 master br0")?;
                for f in Family::BOTH {
                    let (gw1, gw2) = match f {
                        Family::V4 => ("10.20.0.1", "10.20.0.2"),
                        Family::V6 => ("fd00:20::1", "fd00:20::2"),
                    };
                    self.vpcgw.ip([
                        fam(f),
                        "addr",
                        "add",
                        &format!("{gw1}/{}", plen(f)),
                        "dev",
                        "lan",
                    ])?;
                    he2.ip([
                        fam(f),
                        "addr",
                        "add",
                        &format!("{gw2}/{}", plen(f)),
                        "dev",
                        "lan",
                    ])?;
                    self.vpc.ip([
                        fam(f),
                        "addr",
                        "add",
                        &format!("{}/{}", vpc_ip(f), plen(f)),
                        "dev",
                        "br0",
                    ])?;
                    self.vpc
                        .ip([fam(f), "route", "add", "default", "via", gw1])?;
                }
            }
        }
        Ok(())
    }

    /// Plain routing (no VPN) between the sites over `isp`: the lab as a router, the ceiling.
    /// (The next hop is the ISP router: IPv6 refuses a gateway that is itself reached via one.)
    pub fn plain_routes(&self, isp: Isp) -> Result<(), Error> {
        let he = self.head_end(isp);
        let isp_ns = self.isp(isp);
        for f in Family::BOTH {
            // The provider learns the site prefixes too (as it would by BGP for a leased line).
            isp_ns.ip([
                fam(f),
                "route",
                "replace",
                vpc_net(f),
                "via",
                &vpcgw_wan(isp, f).to_string(),
                "dev",
                "vpcgw",
            ])?;
            isp_ns.ip([
                fam(f),
                "route",
                "replace",
                office_net(f),
                "via",
                &cgw_wan(isp, f).to_string(),
                "dev",
                "cgw",
            ])?;
            self.cgw.ip([
                fam(f),
                "route",
                "replace",
                vpc_net(f),
                "via",
                &isp_router(isp, f).to_string(),
                "dev",
                isp_if(isp),
            ])?;
            he.ip([
                fam(f),
                "route",
                "replace",
                office_net(f),
                "via",
                &isp_router(isp, f).to_string(),
                "dev",
                isp_if(isp),
            ])?;
        }
        Ok(())
    }

    /// Removes the plain routes again.
    pub fn remove_plain_routes(&self, isp: Isp) -> Result<(), Error> {
        let he = self.head_end(isp);
        for f in Family::BOTH {
            self.isp(isp).ip([fam(f), "route", "del", vpc_net(f)])?;
            self.isp(isp).ip([fam(f), "route", "del", office_net(f)])?;
            self.cgw.ip([fam(f), "route", "del", vpc_net(f)])?;
            he.ip([fam(f), "route", "del", office_net(f)])?;
        }
        Ok(())
    }

    /// The name prefix of this lab's namespaces: after drop, no namespace starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace of the lab, in topology order.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.office, &self.cgw, &self.isp1, &self.isp2, &self.vpcgw];
        if let Some(he2) = &self.vpcgw2 {
            v.push(he2);
        }
        v.push(&self.vpc);
        v
    }
}

impl Lab {
    /// Points the VPC host's default routes at the head-end of `isp` (only differs with
    /// [`HeadEnds::Two`]).
    pub fn vpc_via(&self, isp: Isp) -> Result<(), Error> {
        for f in Family::BOTH {
            let gw = match (f, isp, &self.vpcgw2) {
                (Family::V4, Isp::Two, Some(_)) => "10.20.0.2",
                (Family::V6, Isp::Two, Some(_)) => "fd00:20::2",
                (Family::V4, _, _) => "10.20.0.1",
                (Family::V6, _, _) => "fd00:20::1",
            };
            self.vpc
                .ip([fam(f), "route", "replace", "default", "via", gw])?;
        }
        Ok(())
    }
}
