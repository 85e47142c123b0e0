//! Protocol scenarios on the deterministic simulator (see `common/mod.rs`). Every scenario also
//! checks, on every datagram, that no (key, nonce) pair is used twice and that no data is sent
//! on a tunnel that is not Up.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use tandem_engine::TunnelState;

#[test]
fn both_tunnels_come_up_and_the_standby_stays_up_on_keepalives_alone() {
    let mut sim = Sim::new(Setup::default());
    sim.add_bidirectional_traffic(ms(20), ms(2000));
    sim.run_until(secs(300));
    for side in [Side::A, Side::B] {
        for t in 0..2 {
            assert_eq!(sim.state(side, t), TunnelState::Up, "{side:?} tunnel {t}");
            let tr = sim.transitions(side, t);
            assert_eq!(
                tr.iter().filter(|(_, s)| *s == TunnelState::Up).count(),
                1,
                "{side:?} tunnel {t} came Up once: {tr:?}"
            );
            assert!(
                tr.iter().all(|(_, s)| *s != TunnelState::Down),
                "{side:?} tunnel {t} went Down: {tr:?}"
            );
            assert!(
                tr[0].0 - sim.base < ms(500),
                "{side:?} tunnel {t} Up after {:?}",
                tr[0].0 - sim.base
            );
        }
        assert_eq!(sim.active(side), Some(0));
        // The standby carried no data, only keepalives, and rekeyed like the primary.
        assert_eq!(sim.data_sent_per_tunnel[side as usize][1], 0);
        let c = sim
            .engine(side)
            .tunnel_counters(tandem_engine::TunnelId(1))
            .copied()
            .unwrap();
        assert!(
            c.rx_packets >= 300 * 4 - 10,
            "standby heard {} packets",
            c.rx_packets
        );
        assert!(
            c.handshakes >= 3,
            "standby rekeyed: {} handshakes",
            c.handshakes
        );
        assert!(c.rtt.is_some());
    }
    let (sent, delivered, dup) = sim.flow_stats(1, sim.at(ms(2000)), sim.at(secs(300)));
    assert_eq!((delivered, dup), (sent, 0));
    let (sent, delivered, dup) = sim.flow_stats(2, sim.at(ms(2000)), sim.at(secs(300)));
    assert_eq!((delivered, dup), (sent, 0));
    assert!(sim.nonces_checked > 30_000);
}
