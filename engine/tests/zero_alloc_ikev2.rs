//! Zero allocations per data packet on an IKEv2 connection, with the per-thread counting
//! `#[global_allocator]` of `tandem-testkit`, as in `zero_alloc.rs`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use tandem_engine::{HEADROOM, MAX_CONTROL_DATAGRAM, NetAction, TAILROOM, TunAction, TunnelId};
use tandem_testkit::{CountingAlloc, Region};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const PACKETS: u64 = 100_000;

/// The same steady state on an IKEv2 connection, counting the data path only: each data packet
/// (seal in place on one side, open in place on the other) must allocate nothing. The IKE
/// messages in between (the idle standby's liveness probes, one per `dpd_interval`) are not data
/// packets and may allocate; they run outside the counted regions.
#[test]
fn an_ikev2_connection_allocates_nothing_per_data_packet() {
    let setup = Setup::default();
    let lifetimes = (secs(8 * 3600), secs(3600));
    let a = ike_config(&setup, Side::A, lifetimes);
    let b = ike_config(&setup, Side::B, lifetimes);
    let mut sim = Sim::with_configs(setup, a, b);
    sim.run_until(secs(5));
    let mut now = sim.now;
    let mut eng = sim.engines;
    for e in eng.iter_mut() {
        while e.poll_event().is_some() {}
    }
    // The packets a TUN hands over (common's builder), without the engine's headroom.
    let packet = |src, dst| {
        let (buf, range) = ipv4_udp(src, dst, 1200);
        buf[range].to_vec()
    };
    let ab = packet([10, 10, 0, 10], [10, 20, 0, 10]);
    let ba = packet([10, 20, 0, 10], [10, 10, 0, 10]);
    let mut buf = vec![0u8; HEADROOM + 1500 + TAILROOM];
    let mut tx = vec![0u8; MAX_CONTROL_DATAGRAM];
    let (mut delivered, mut control) = (0u64, 0u64);
    let from_a: Vec<_> = (0..2).map(|t| addr(Side::A, t)).collect();
    let from_b: Vec<_> = (0..2).map(|t| addr(Side::B, t)).collect();
    // The counter counts (so a zero below means something).
    let probe = Region::new();
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(probe.change().allocations >= 1);
    drop(v);
    let (mut allocations, mut reallocations) = (0usize, 0usize);
    for _ in 0..PACKETS {
        now += Duration::from_micros(20);
        let region = Region::new();
        for dir in 0..2 {
            let (x, y) = eng.split_at_mut(1);
            let (src, dst, pkt, from) = if dir == 0 {
                (&mut x[0], &mut y[0], &ab, &from_a)
            } else {
                (&mut y[0], &mut x[0], &ba, &from_b)
            };
            let range = HEADROOM..HEADROOM + pkt.len();
            buf[range.clone()].copy_from_slice(pkt);
            let TunAction::Send {
                tunnel, datagram, ..
            } = src.handle_tun_packet(&mut buf, range, now)
            else {
                panic!("not sent");
            };
            let r =
                dst.handle_datagram(tunnel, from[usize::from(tunnel.0)], &mut buf, datagram, now);
            if matches!(r, NetAction::Deliver { .. }) {
                delivered += 1;
            }
        }
        let stats = region.change();
        allocations += stats.allocations;
        reallocations += stats.reallocations;
        // Timers and IKE messages, uncounted.
        for dir in 0..2 {
            let (x, y) = eng.split_at_mut(1);
            let (src, dst, from) = if dir == 0 {
                (&mut x[0], &mut y[0], &from_a)
            } else {
                (&mut y[0], &mut x[0], &from_b)
            };
            if src.poll_timeout().is_some_and(|t| t <= now) {
                src.handle_timeout(now);
            }
            while let Some(t) = src.poll_transmit(&mut tx) {
                let r = dst.handle_datagram(
                    t.tunnel,
                    from[usize::from(t.tunnel.0)],
                    &mut tx,
                    0..t.len,
                    now,
                );
                assert_eq!(r, NetAction::Consumed);
                control += 1;
            }
            while src.poll_event().is_some() {}
        }
    }
    assert_eq!(delivered, 2 * PACKETS);
    assert!(
        control >= 2 * 8,
        "the standby's liveness probes ran during the measurement: {control}"
    );
    for e in &eng {
        for t in 0..2 {
            assert_eq!(
                e.tunnel_state(TunnelId(t)),
                Some(tandem_engine::TunnelState::Up)
            );
        }
    }
    assert_eq!(
        (allocations, reallocations),
        (0, 0),
        "allocations during {PACKETS} IKEv2 data packets each way"
    );
}
