//! The router and the traffic selectors (docs/protocol.md).
//!
//! Invariant: a packet from the TUN goes to the connection whose `remote_subnets` holds the
//! longest prefix covering its destination; config validation guarantees that prefixes of
//! different connections do not overlap, so the longest match is unique. The tables are flat
//! vectors sorted by prefix length (longest first), built once per config: a lookup is a scan
//! with a mask and a compare per entry, no allocation, and a gateway holds few prefixes.

use std::net::IpAddr;

use ipnet::IpNet;

/// Index of a connection in config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ConnectionId(pub u16);

#[derive(Debug, Clone, Copy)]
struct V4Entry {
    net: u32,
    mask: u32,
    conn: ConnectionId,
}

#[derive(Debug, Clone, Copy)]
struct V6Entry {
    net: u128,
    mask: u128,
    conn: ConnectionId,
}

/// Longest-prefix match from destination address to connection.
#[derive(Debug, Clone, Default)]
pub struct Router {
    v4: Vec<(u8, V4Entry)>,
    v6: Vec<(u8, V6Entry)>,
}

impl Router {
    /// Builds the table from every connection's `remote_subnets`.
    #[must_use]
    pub fn new<'a>(routes: impl IntoIterator<Item = (ConnectionId, &'a [IpNet])>) -> Self {
        let mut r = Router::default();
        for (conn, nets) in routes {
            for net in nets {
                match net.trunc() {
                    IpNet::V4(n) => r.v4.push((
                        n.prefix_len(),
                        V4Entry {
                            net: u32::from(n.network()),
                            mask: u32::from(n.netmask()),
                            conn,
                        },
                    )),
                    IpNet::V6(n) => r.v6.push((
                        n.prefix_len(),
                        V6Entry {
                            net: u128::from(n.network()),
                            mask: u128::from(n.netmask()),
                            conn,
                        },
                    )),
                }
            }
        }
        r.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        r.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        r
    }

    /// The connection for a destination, by longest prefix.
    #[must_use]
    pub fn lookup(&self, dst: IpAddr) -> Option<ConnectionId> {
        match dst {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find(|(_, e)| a & e.mask == e.net)
                    .map(|(_, e)| e.conn)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find(|(_, e)| a & e.mask == e.net)
                    .map(|(_, e)| e.conn)
            }
        }
    }
}

/// A set of prefixes for selector checks ("is this address inside one of them").
#[derive(Debug, Clone, Default)]
pub struct PrefixSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl PrefixSet {
    /// From config prefixes.
    #[must_use]
    pub fn new(nets: &[IpNet]) -> Self {
        let mut s = PrefixSet::default();
        for net in nets {
            match net.trunc() {
                IpNet::V4(n) => s.v4.push((u32::from(n.network()), u32::from(n.netmask()))),
                IpNet::V6(n) => {
                    s.v6.push((u128::from(n.network()), u128::from(n.netmask())))
                }
            }
        }
        s
    }

    /// Whether `addr` lies inside one of the prefixes.
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|&(n, m)| a & m == n)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|&(n, m)| a & m == n)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_longest_prefix_wins_over_shorter_ones_for_ipv4_and_ipv6() {
        let a = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let b = nets(&["10.20.0.0/16", "2001:db8:1::/48"]);
        let c = nets(&["10.20.30.0/24"]);
        let r = Router::new([
            (ConnectionId(0), a.as_slice()),
            (ConnectionId(1), b.as_slice()),
            (ConnectionId(2), c.as_slice()),
        ]);
        let q = |s: &str| r.lookup(s.parse().unwrap());
        assert_eq!(q("10.1.2.3"), Some(ConnectionId(0)));
        assert_eq!(q("10.20.1.1"), Some(ConnectionId(1)));
        assert_eq!(q("10.20.30.40"), Some(ConnectionId(2)));
        assert_eq!(q("11.0.0.1"), None);
        assert_eq!(q("2001:db8:2::1"), Some(ConnectionId(0)));
        assert_eq!(q("2001:db8:1::1"), Some(ConnectionId(1)));
        assert_eq!(q("2001:db9::1"), None);
    }

    #[test]
    fn a_default_route_and_host_routes_match_as_expected() {
        let a = nets(&["0.0.0.0/0", "::/0"]);
        let b = nets(&["192.0.2.7/32", "2001:db8::7/128"]);
        let r = Router::new([
            (ConnectionId(0), a.as_slice()),
            (ConnectionId(1), b.as_slice()),
        ]);
        assert_eq!(
            r.lookup("192.0.2.7".parse().unwrap()),
            Some(ConnectionId(1))
        );
        assert_eq!(
            r.lookup("192.0.2.8".parse().unwrap()),
            Some(ConnectionId(0))
        );
        assert_eq!(
            r.lookup("2001:db8::7".parse().unwrap()),
            Some(ConnectionId(1))
        );
        assert_eq!(
            r.lookup("2001:db8::8".parse().unwrap()),
            Some(ConnectionId(0))
        );
    }

    #[test]
    fn a_prefix_set_contains_only_addresses_inside_its_prefixes() {
        let s = PrefixSet::new(&nets(&["10.10.0.0/24", "fd00::/64", "10.10.1.5/32"]));
        assert!(s.contains("10.10.0.200".parse().unwrap()));
        assert!(s.contains("10.10.1.5".parse().unwrap()));
        assert!(!s.contains("10.10.1.6".parse().unwrap()));
        assert!(s.contains("fd00::1234".parse().unwrap()));
        assert!(!s.contains("fd00:0:0:1::1".parse().unwrap()));
    }
}
