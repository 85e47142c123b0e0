//! Zero allocations per packet in steady state: a counting `#[global_allocator]` over 10^5
//! packets each way, with the timers, keepalives, DPD echoes and their replies running
//! alongside. Handshakes happen before the measured region (they may allocate: a boxed
//! initiator state, the key-log string).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use tandem_engine::{HEADROOM, MAX_CONTROL_DATAGRAM, NetAction, TAILROOM, TunAction, TunnelId};
use tandem_testkit::{CountingAlloc, Region};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const PACKETS: u64 = 100_000;

#[test]
fn the_engine_allocates_nothing_per_packet_in_steady_state() {
    for mode in [
        tandem_engine::Mode::ActiveStandby,
        tandem_engine::Mode::ActiveActive,
    ] {
        steady_state(mode);
    }
}

fn steady_state(mode: tandem_engine::Mode) {
    // Warm up on the simulator: handshakes, both tunnels Up.
    let mut sim = Sim::new(Setup {
        mode,
        ..Setup::default()
    });
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
    let (mut delivered, mut control, mut probes) = (0u64, 0u64, 0u64);
    let from_a: Vec<_> = (0..2).map(|t| addr(Side::A, t)).collect();
    let from_b: Vec<_> = (0..2).map(|t| addr(Side::B, t)).collect();

    // The counter counts (so a zero below means something).
    let probe = Region::new();
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(probe.change().allocations >= 1);
    drop(v);

    let region = Region::new();
    for i in 0..PACKETS {
        // 20 µs per round: 2 s of virtual time, so keepalives and echoes run too.
        now += Duration::from_micros(20);
        if i % 50 == 0 {
            // A drill's 1 ms probe stream.
            eng[0].send_probe("prod-vpc", i, now).unwrap();
        }
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
            while let Some(ev) = src.poll_event() {
                if matches!(ev, tandem_engine::Event::ProbeReply { .. }) {
                    probes += 1;
                }
            }
        }
    }
    let stats = region.change();
    assert_eq!(delivered, 2 * PACKETS);
    assert_eq!(probes, PACKETS / 50, "every probe came back");
    assert!(
        control >= 2 * 2 * 8,
        "keepalives ran during the measurement: {control}"
    );
    assert_eq!(
        eng[0].tunnel_state(TunnelId(0)),
        Some(tandem_engine::TunnelState::Up)
    );
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "{mode:?}: allocations during {PACKETS} packets each way: {stats:?}"
    );
}
