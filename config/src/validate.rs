//! Cross-field rules, checked after the walk on the values that parsed, over the main file and
//! its included files together. A duplicate or an overlap is reported at its second occurrence
//! (later in the file, or in a later file) and names the first: `line N` in the same file,
//! `FILE:LINE:COL` in another.
//!
//! - connection names are unique; tunnel names are unique within their connection;
//! - `remote_subnets` of different connections do not overlap (routing is by longest-prefix
//!   match over them: an overlap would send a prefix to two places);
//! - within a connection, no prefix overlaps another one of the same list, and `local_subnets`
//!   and `remote_subnets` are disjoint (a packet could match both selectors);
//! - no two tunnels of one connection have the same `local` -> `remote` pair (tunnels may share a
//!   `local` otherwise: a hub serves all its branches on one port);
//! - a tunnel has `local` or `remote` (or it could neither send nor be reached), and when both,
//!   of the same address family;
//! - active-standby priorities are distinct within a connection (the active tunnel must be
//!   unambiguous);
//! - `routing = "interfaces"`: `ifname` and `inside` only there; interface names (given or
//!   defaulted) unique over the gateway and not the shared TUN's; `inside` is at most one IPv4
//!   /30 (not its network or broadcast address) and one IPv6 /126; such a connection is left out
//!   of the two overlap rules above (the kernel's routing table, not ours, picks its tunnel);
//! - `dpd_timeout` > `dpd_interval`, each the explicit value or its `timers` profile's;
//!   1 s <= `rekey_after` < reject-after (the bounds of single durations, such as the
//!   `dpd_interval` floor, are checked as they parse, in schema.rs).

use ipnet::IpNet;
use std::collections::HashMap;

use crate::Mode;
use crate::Routing;
use crate::diag::Sink;
use crate::schema::{At, RawConnection};
use crate::values::{format_duration, overlaps};

/// Prefix length of a tunnel's IPv4 inside network: two hosts, as AWS assigns them.
const INSIDE_V4_PREFIX: u8 = 30;
/// Prefix length of a tunnel's IPv6 inside network (AWS's IPv6 inside CIDRs).
const INSIDE_V6_PREFIX: u8 = 126;

pub(crate) fn check(sink: &mut Sink<'_>, connections: &[RawConnection], tun_name: Option<&str>) {
    connection_names(sink, connections);
    interfaces(sink, connections, tun_name);
    remote_subnets_between_connections(sink, connections);
    endpoint_pairs(sink, connections);
    ports_and_protocols(sink, connections);
    for c in connections {
        tunnel_names(sink, c);
        subnets_within(sink, &c.local_subnets);
        subnets_within(sink, &c.remote_subnets);
        if c.routing == Routing::Static {
            local_vs_remote(sink, c);
        }
        priorities(sink, c);
        timers(sink, c);
        addresses(sink, c);
    }
}

fn connection_names(sink: &mut Sink<'_>, connections: &[RawConnection]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for name in connections.iter().filter_map(|c| c.name.as_ref()) {
        if let Some(&first) = seen.get(name.value.as_str()) {
            let line = sink.place(first, name.span.start);
            sink.error(
                &name.span,
                &name.path,
                format!(
                    "duplicate connection name \"{}\" (first at {line})",
                    name.value
                ),
            );
        } else {
            seen.insert(&name.value, name.span.start);
        }
    }
}

fn tunnel_names(sink: &mut Sink<'_>, c: &RawConnection) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for name in c.tunnels.iter().filter_map(|t| t.name.as_ref()) {
        if let Some(&first) = seen.get(name.value.as_str()) {
            let line = sink.place(first, name.span.start);
            sink.error(
                &name.span,
                &name.path,
                format!(
                    "duplicate tunnel name \"{}\" in this connection (first at {line})",
                    name.value
                ),
            );
        } else {
            seen.insert(&name.value, name.span.start);
        }
    }
}

fn remote_subnets_between_connections(sink: &mut Sink<'_>, connections: &[RawConnection]) {
    for (j, later) in connections.iter().enumerate() {
        if later.routing != Routing::Static {
            continue;
        }
        for b in &later.remote_subnets {
            let earlier = connections[..j]
                .iter()
                .filter(|c| c.routing == Routing::Static)
                .flat_map(|c| c.remote_subnets.iter().map(move |a| (c, a)))
                .find(|(_, a)| overlaps(&a.value, &b.value));
            if let Some((c, a)) = earlier {
                let line = sink.place(a.span.start, b.span.start);
                let who = c
                    .name
                    .as_ref()
                    .map_or_else(|| c.path.clone(), |n| format!("connection \"{}\"", n.value));
                sink.error(
                    &b.span,
                    &b.path,
                    format!(
                        "{} overlaps {} of {who} ({line}): remote_subnets of different connections must not overlap",
                        b.value, a.value
                    ),
                );
            }
        }
    }
}

fn subnets_within(sink: &mut Sink<'_>, list: &[At<IpNet>]) {
    for (j, b) in list.iter().enumerate() {
        if let Some(a) = list[..j].iter().find(|a| overlaps(&a.value, &b.value)) {
            let line = sink.place(a.span.start, b.span.start);
            sink.error(
                &b.span,
                &b.path,
                format!("{} overlaps {} ({line}) in the same list", b.value, a.value),
            );
        }
    }
}

fn local_vs_remote(sink: &mut Sink<'_>, c: &RawConnection) {
    for l in &c.local_subnets {
        for r in &c.remote_subnets {
            if !overlaps(&l.value, &r.value) {
                continue;
            }
            let (first, second) = if l.span.start < r.span.start {
                (l, r)
            } else {
                (r, l)
            };
            let line = sink.place(first.span.start, second.span.start);
            sink.error(
                &second.span,
                &second.path,
                format!(
                    "{} overlaps {} ({line}): a connection's local_subnets and remote_subnets must be disjoint",
                    second.value, first.value
                ),
            );
        }
    }
}

/// Tunnels may share a local address:port (a hub serves every branch on one port: the engine
/// tells their packets apart by SPI, initiations by the tunnel's PSK). What cannot be told apart
/// — and would make failover between the tunnels mean nothing — is two tunnels of one
/// connection on the same path: the same `local` (or both ephemeral) and the same `remote`.
fn endpoint_pairs(sink: &mut Sink<'_>, connections: &[RawConnection]) {
    for c in connections {
        let mut seen: HashMap<
            (Option<std::net::SocketAddr>, std::net::SocketAddr),
            (String, usize),
        > = HashMap::new();
        for t in c.tunnels.iter().filter(|t| t.endpoints_ok) {
            let local = t.local.as_ref().map(|a| a.value);
            let Some(remote) = t.remote.as_ref() else {
                continue;
            };
            // Point at the later of the two addresses: the line that completes the duplicate.
            let at = match &t.local {
                Some(l) if l.span.start > remote.span.start => l,
                _ => remote,
            };
            if let Some((first_path, first_offset)) = seen.get(&(local, remote.value)) {
                let line = sink.place(*first_offset, at.span.start);
                let show = local.map_or("any".to_owned(), |a| a.to_string());
                sink.error(
                    &at.span,
                    &at.path,
                    format!(
                        "endpoint pair {show} -> {} is already used by {first_path} ({line}): two tunnels of one connection on the same path are one path, failover between them means nothing",
                        remote.value
                    ),
                );
            } else {
                seen.insert((local, remote.value), (t.path.clone(), at.span.start));
            }
        }
    }
    // Across connections, tunnels on one local port are told apart by their peer key and PSK:
    // two with both equal could not be (an initiation would authenticate for either).
    let mut on_port: HashMap<std::net::SocketAddr, Vec<(&crate::schema::RawTunnel, &str)>> =
        HashMap::new();
    for c in connections {
        for t in c.tunnels.iter().filter(|t| t.endpoints_ok) {
            let Some(local) = &t.local else { continue };
            let same = on_port.get(&local.value).and_then(|v| {
                v.iter().find(|(o, _)| {
                    o.peer_public_key.is_some()
                        && o.peer_public_key == t.peer_public_key
                        && matches!((&o.psk, &t.psk), (Some(a), Some(b)) if *a.0 == *b.0)
                })
            });
            if let Some((first, _)) = same {
                let at = first
                    .local
                    .as_ref()
                    .map_or(first.span.start, |l| l.span.start);
                let line = sink.place(at, local.span.start);
                sink.error(
                    &local.span,
                    &local.path,
                    format!(
                        "local {} is shared with {} ({line}) by a tunnel with the same peer key and the same PSK: their handshakes could not be told apart; give each tunnel its own PSK",
                        local.value, first.path
                    ),
                );
            } else {
                on_port
                    .entry(local.value)
                    .or_default()
                    .push((t, t.path.as_str()));
            }
        }
    }
}

/// A local address and port speaks one protocol (the engine reads a datagram with the non-ESP
/// marker as a Noise handshake or an IKE message by its port), and the IKEv2 tunnels on it are
/// told apart by their peer's address, so no two of them may have the same one.
fn ports_and_protocols(sink: &mut Sink<'_>, connections: &[RawConnection]) {
    let mut first: HashMap<std::net::SocketAddr, (bool, &str, usize)> = HashMap::new();
    let mut ike_peers: HashMap<(std::net::SocketAddr, std::net::IpAddr), (&str, usize)> =
        HashMap::new();
    for c in connections {
        let Some(protocol) = &c.protocol else {
            continue;
        };
        let ikev2 = matches!(protocol, crate::Protocol::Ikev2(_));
        for t in c.tunnels.iter().filter(|t| t.endpoints_ok) {
            let Some(local) = &t.local else { continue };
            match first.get(&local.value) {
                Some((kind, path, at)) if *kind != ikev2 => {
                    let line = sink.place(*at, local.span.start);
                    let name = |k: bool| if k { "ikev2" } else { "tandem" };
                    sink.error(
                        &local.span,
                        &local.path,
                        format!(
                            "local {} is used by {path} ({line}) with protocol \"{}\": one local address and port speaks one protocol; give the protocol \"{}\" tunnels another address or port",
                            local.value,
                            name(*kind),
                            name(ikev2)
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    first.insert(local.value, (ikev2, &t.path, local.span.start));
                }
            }
            let Some(remote) = t.remote.as_ref().filter(|_| ikev2) else {
                continue;
            };
            let key = (local.value, remote.value.ip());
            if let Some((path, at)) = ike_peers.get(&key) {
                let line = sink.place(*at, remote.span.start);
                sink.error(
                    &remote.span,
                    &remote.path,
                    format!(
                        "the IKEv2 peer {} on local {} is already {path}'s ({line}): IKE messages find their tunnel by the peer's address",
                        remote.value.ip(),
                        local.value
                    ),
                );
            } else {
                ike_peers.insert(key, (&t.path, remote.span.start));
            }
        }
    }
    // A bare IKEv2 `local` also listens on port 500 of its address (IKE_SA_INIT, no marker):
    // no tunnel may name that address and port explicitly.
    let mut implied: HashMap<std::net::SocketAddr, (&str, usize)> = HashMap::new();
    for c in connections {
        for t in &c.tunnels {
            if let (Some(ike500), Some(local)) =
                (t.ike.as_ref().and_then(|i| i.local_ike), &t.local)
            {
                implied.entry(ike500).or_insert((&t.path, local.span.start));
            }
        }
    }
    for c in connections {
        for t in c.tunnels.iter().filter(|t| t.endpoints_ok) {
            let Some(local) = &t.local else { continue };
            if t.ike.as_ref().is_some_and(|i| i.local_ike.is_some()) {
                continue;
            }
            if let Some((path, at)) = implied.get(&local.value) {
                let line = sink.place(*at, local.span.start);
                sink.error(
                    &local.span,
                    &local.path,
                    format!(
                        "local {} is the IKE port of {path}'s bare local address ({line}), where its IKEv2 exchanges start without the non-ESP marker: give this tunnel another address or port, or give {path} an explicit port",
                        local.value
                    ),
                );
            }
        }
    }
}

fn addresses(sink: &mut Sink<'_>, c: &RawConnection) {
    for t in c.tunnels.iter().filter(|t| t.endpoints_ok) {
        match (&t.local, &t.remote) {
            (Some(l), Some(r)) if l.value.is_ipv4() != r.value.is_ipv4() => {
                sink.error(
                    &r.span,
                    &r.path,
                    format!(
                        "remote {} and local {} are of different address families",
                        r.value, l.value
                    ),
                );
            }
            (None, None) => sink.error(
                &t.span,
                &t.path,
                "tunnel has neither local nor remote: set remote (initiator) or local (responder-only)",
            ),
            _ => {}
        }
    }
}

fn priorities(sink: &mut Sink<'_>, c: &RawConnection) {
    if c.mode != Mode::ActiveStandby {
        return;
    }
    let mut seen: HashMap<u32, (String, usize)> = HashMap::new();
    for t in &c.tunnels {
        let Some(p) = &t.priority else { continue };
        let who = t
            .name
            .as_ref()
            .map_or_else(|| t.path.clone(), |n| format!("tunnel \"{}\"", n.value));
        if let Some((first, offset)) = seen.get(&p.value) {
            let line = sink.place(*offset, p.span.start);
            sink.error(
                &p.span,
                &p.path,
                format!(
                    "priority {} ties with {first} ({line}): in active-standby mode priorities must differ",
                    p.value
                ),
            );
        } else {
            seen.insert(p.value, (who, p.span.start));
        }
    }
}

fn timers(sink: &mut Sink<'_>, c: &RawConnection) {
    // A key not given takes its `timers` profile's value (the floor on `dpd_interval` is checked
    // as it parses, in schema.rs).
    let interval = c
        .dpd_interval
        .as_ref()
        .map_or(c.timers.dpd_interval(), |a| a.value);
    let timeout = c
        .dpd_timeout
        .as_ref()
        .map_or(c.timers.dpd_timeout(), |a| a.value);
    if timeout <= interval {
        // Point at the value the operator wrote: the timeout if given, else the interval.
        let at = c.dpd_timeout.as_ref().or(c.dpd_interval.as_ref());
        if let Some(at) = at {
            sink.error(
                &at.span,
                &at.path,
                format!(
                    "dpd_timeout ({}) must be greater than dpd_interval ({})",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            );
        }
    }
}

fn interfaces(sink: &mut Sink<'_>, connections: &[RawConnection], tun_name: Option<&str>) {
    // Interface name -> (who has it, offset of the value or the tunnel name that set it).
    let mut seen: HashMap<String, (String, usize)> = HashMap::new();
    if let Some(t) = tun_name {
        seen.insert(t.to_owned(), ("[gateway] tun_name".to_owned(), usize::MAX));
    }
    for c in connections {
        for t in &c.tunnels {
            if c.routing == Routing::Static {
                if let Some(n) = &t.ifname {
                    sink.error(
                        &n.span,
                        &n.path,
                        "ifname applies only to a connection with routing = \"interfaces\"",
                    );
                }
                if let Some(span) = &t.inside_span {
                    sink.error(
                        span,
                        &format!("{}.inside", t.path),
                        "inside applies only to a connection with routing = \"interfaces\"",
                    );
                }
                continue;
            }
            inside(sink, &t.inside);
            let (Some(conn), Some(name)) = (&c.name, &t.name) else {
                continue;
            };
            let (ifname, span, path, defaulted) = match &t.ifname {
                Some(n) => (n.value.clone(), n.span.clone(), n.path.clone(), false),
                None => (
                    crate::schema::default_ifname(&conn.value, &name.value),
                    name.span.clone(),
                    format!("{}.ifname", t.path),
                    true,
                ),
            };
            let who = format!("tunnel \"{}\" of connection \"{}\"", name.value, conn.value);
            if let Some((first, offset)) = seen.get(&ifname) {
                let whose = if *offset == usize::MAX {
                    first.clone()
                } else {
                    format!("{first} ({})", sink.place(*offset, span.start))
                };
                let what = if defaulted {
                    format!(
                        "the default interface name \"{ifname}\" (\"<connection>-<tunnel>\" cut to 15 bytes) is already used by {whose}: set ifname"
                    )
                } else {
                    format!("interface name \"{ifname}\" is already used by {whose}")
                };
                sink.error(&span, &path, what);
            } else {
                seen.insert(ifname, (who, span.start));
            }
        }
    }
}

fn inside(sink: &mut Sink<'_>, list: &[At<IpNet>]) {
    let (mut v4, mut v6) = (None::<&At<IpNet>>, None::<&At<IpNet>>);
    for a in list {
        let (want, family, first) = match a.value {
            IpNet::V4(_) => (INSIDE_V4_PREFIX, "IPv4", &mut v4),
            IpNet::V6(_) => (INSIDE_V6_PREFIX, "IPv6", &mut v6),
        };
        if let Some(f) = first {
            // Both addresses are in one tunnel, so in one file: `line N`.
            let line = sink.place(f.span.start, a.span.start);
            sink.error(
                &a.span,
                &a.path,
                format!("a second {family} inside address (the first is {} on {line}): at most one per family", f.value),
            );
            continue;
        }
        *first = Some(a);
        if a.value.prefix_len() != want {
            sink.error(
                &a.span,
                &a.path,
                format!(
                    "inside address {} is not a /{want}: a tunnel's {family} inside network is a /{want} (its two hosts are the tunnel's ends)",
                    a.value
                ),
            );
        } else if let IpNet::V4(n) = a.value {
            if n.addr() == n.network() || n.addr() == n.broadcast() {
                sink.error(
                    &a.span,
                    &a.path,
                    format!(
                        "inside address {} is the network or broadcast address of its /30: use one of its two hosts",
                        a.value
                    ),
                );
            }
        }
    }
}
