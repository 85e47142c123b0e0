//! `routing = "interfaces"` (docs/configuration.md): the daemon reads a packet from one tunnel's
//! own interface and asks the engine to send it on exactly that tunnel
//! ([`Engine::handle_tun_packet_on`]); the router and the failover selector stay out of it.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use tandem_engine::{
    DropReason, EngineConfig, NetAction, Routing, TunAction, TunnelId, TunnelState,
};

fn interfaces(mut cfg: EngineConfig) -> EngineConfig {
    cfg.connections[0].routing = Routing::Interfaces;
    cfg
}

/// Both sides in interface mode with the usual selectors (A: 10.10/24 -> 10.20/24), both Up.
fn up_pair() -> Sim {
    let setup = Setup::default();
    let (a, b) = (
        interfaces(config(&setup, Side::A)),
        interfaces(config(&setup, Side::B)),
    );
    let mut sim = Sim::with_configs(setup, a, b);
    sim.run_until(secs(3));
    assert_eq!(sim.state(Side::A, 0), TunnelState::Up);
    assert_eq!(sim.state(Side::A, 1), TunnelState::Up);
    assert_eq!(sim.active(Side::A), Some(0));
    sim
}

/// Sends one packet from A's LAN on `tunnel`'s interface; returns what the engine did with it and,
/// if sealed, what B made of the datagram.
fn send_on(sim: &mut Sim, tunnel: u16, dst: [u8; 4]) -> (TunAction, Option<NetAction>) {
    let (mut buf, range) = ipv4_udp([10, 10, 0, 10], dst, 100);
    let now = sim.now;
    let r = sim
        .engine(Side::A)
        .handle_tun_packet_on(TunnelId(tunnel), &mut buf, range, now);
    let got = match &r {
        TunAction::Send {
            tunnel: t,
            datagram,
            ..
        } => {
            let bytes = buf[datagram.clone()].to_vec();
            Some(sim.inject(
                Side::B,
                usize::from(t.0),
                addr(Side::A, usize::from(t.0)),
                bytes,
            ))
        }
        _ => None,
    };
    (r, got)
}

#[test]
fn a_packet_read_from_a_tunnels_interface_goes_out_on_that_tunnel_even_the_standby() {
    let mut sim = up_pair();
    for tunnel in [0u16, 1] {
        let (r, got) = send_on(&mut sim, tunnel, [10, 20, 0, 10]);
        assert!(
            matches!(r, TunAction::Send { tunnel: t, .. } if t == TunnelId(tunnel)),
            "tunnel {tunnel}: {r:?}"
        );
        assert!(
            matches!(got, Some(NetAction::Deliver { .. })),
            "tunnel {tunnel}: B made {got:?} of it"
        );
    }
    // The active tunnel is still tunnel 0: sending on the standby moved nothing.
    assert_eq!(sim.active(Side::A), Some(0));
}

#[test]
fn selectors_still_apply_and_the_router_no_longer_knows_the_connection() {
    let mut sim = up_pair();
    let (r, _) = send_on(&mut sim, 0, [10, 99, 0, 10]);
    assert_eq!(r, TunAction::Drop(DropReason::Selector));
    // The shared TUN's path has no route into an interface-mode connection.
    let (mut buf, range) = ipv4_udp([10, 10, 0, 10], [10, 20, 0, 10], 100);
    let now = sim.now;
    let r = sim.engine(Side::A).handle_tun_packet(&mut buf, range, now);
    assert!(!matches!(r, TunAction::Send { .. }), "{r:?}");
    assert_eq!(
        sim.engine(Side::A).drop_counters().get(DropReason::NoRoute),
        1
    );
}

#[test]
fn a_tunnel_that_went_down_drops_its_interfaces_packets_as_no_tunnel_while_the_other_sends() {
    let mut sim = up_pair();
    sim.cut_both(1, true);
    let t = sim.elapsed();
    sim.run_until(t + ms(1250) + ms(100));
    assert_eq!(sim.state(Side::A, 1), TunnelState::Down);
    let (r, _) = send_on(&mut sim, 1, [10, 20, 0, 10]);
    assert_eq!(r, TunAction::Drop(DropReason::NoTunnel));
    let (r, got) = send_on(&mut sim, 0, [10, 20, 0, 10]);
    assert!(matches!(r, TunAction::Send { .. }), "{r:?}");
    assert!(matches!(got, Some(NetAction::Deliver { .. })));
}

#[test]
fn a_static_connections_tunnel_takes_no_packet_through_the_interface_path() {
    let mut sim = Sim::new(Setup::default());
    sim.run_until(secs(3));
    let (r, _) = send_on(&mut sim, 0, [10, 20, 0, 10]);
    assert_eq!(r, TunAction::Drop(DropReason::NoTunnel));
}
