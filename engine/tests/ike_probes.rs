//! Drill probes on an IKEv2 connection (docs/protocol.md, "Drill probes on IKEv2 tunnels"): an
//! ICMP echo request sealed into the Child SA, answered by a host on the far side (here the test,
//! standing in for the peer's host: it turns the delivered request into the reply a kernel would
//! send and hands it to the far engine's TUN side), and the reply consumed as the probe's reply,
//! never delivered. Zero allocations per probe, with the per-thread counting allocator.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use common::*;
use tandem_engine::checksum::checksum;
use tandem_engine::{
    DropReason, Engine, Event, HEADROOM, IkeProbe, MAX_CONTROL_DATAGRAM, NetAction, TAILROOM,
    TunAction,
};
use tandem_testkit::{CountingAlloc, Region};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const PROBES: u64 = 20_000;

/// Two IKEv2 engines Up; A's tunnels probe 10.20.0.1 (in B's local subnet) from 10.10.0.1.
fn up_pair() -> (Vec<Engine>, Instant) {
    let setup = Setup::default();
    let lifetimes = (secs(8 * 3600), secs(3600));
    let mut a = ike_config(&setup, Side::A, lifetimes);
    for t in &mut a.connections[0].tunnels {
        t.ike.as_mut().unwrap().probe = Some(IkeProbe {
            source: "10.10.0.1".parse().unwrap(),
            target: "10.20.0.1".parse().unwrap(),
        });
    }
    let b = ike_config(&setup, Side::B, lifetimes);
    let mut sim = Sim::with_configs(setup, a, b);
    sim.run_until(secs(5));
    let now = sim.now;
    let mut eng = sim.engines;
    for e in eng.iter_mut() {
        while e.poll_event().is_some() {}
    }
    (eng.into_iter().collect(), now)
}

/// What the target's kernel does with an echo request: the reply, same id, sequence and data.
fn answer_in_place(pkt: &mut [u8]) {
    let (s, d) = (
        [pkt[12], pkt[13], pkt[14], pkt[15]],
        [pkt[16], pkt[17], pkt[18], pkt[19]],
    );
    pkt[12..16].copy_from_slice(&d);
    pkt[16..20].copy_from_slice(&s);
    assert_eq!(pkt[20], 8, "an ICMP echo request");
    pkt[20] = 0;
    pkt[22..24].fill(0);
    let c = checksum(&pkt[20..]);
    pkt[22..24].copy_from_slice(&c.to_be_bytes());
}

struct Rig {
    eng: Vec<Engine>,
    now: Instant,
    tx: Vec<u8>,
    buf: Vec<u8>,
    from: [Vec<SocketAddr>; 2],
}

impl Rig {
    fn new() -> Rig {
        let (eng, now) = up_pair();
        Rig {
            eng,
            now,
            tx: vec![0u8; MAX_CONTROL_DATAGRAM],
            buf: vec![0u8; HEADROOM + 1500 + TAILROOM],
            from: [
                (0..2).map(|t| addr(Side::A, t)).collect(),
                (0..2).map(|t| addr(Side::B, t)).collect(),
            ],
        }
    }

    /// Sends probe `id` from A; B delivers the request, the "host" answers it, B seals the reply
    /// and A gets it. `damage` may change the reply before B seals it. Returns what A did with
    /// the reply.
    fn round(&mut self, id: u64, damage: impl Fn(&mut [u8])) -> NetAction {
        self.now += Duration::from_micros(200);
        let now = self.now;
        let (a, b) = self.eng.split_at_mut(1);
        let (a, b) = (&mut a[0], &mut b[0]);
        a.send_probe("prod-vpc", id, now).unwrap();
        let t = a.poll_transmit(&mut self.tx).expect("the probe is sent");
        let from_a = self.from[0][usize::from(t.tunnel.0)];
        let NetAction::Deliver { packet, .. } =
            b.handle_datagram(t.tunnel, from_a, &mut self.tx, 0..t.len, now)
        else {
            panic!("B delivers the echo request to its TUN");
        };
        let len = packet.len();
        let at: Range<usize> = HEADROOM..HEADROOM + len;
        self.buf[at.clone()].copy_from_slice(&self.tx[packet]);
        answer_in_place(&mut self.buf[at.clone()]);
        damage(&mut self.buf[at.clone()]);
        let TunAction::Send {
            tunnel, datagram, ..
        } = b.handle_tun_packet(&mut self.buf, at, now)
        else {
            panic!("B sends the reply into the tunnel");
        };
        let from_b = self.from[1][usize::from(tunnel.0)];
        a.handle_datagram(tunnel, from_b, &mut self.buf, datagram, now)
    }
}

#[test]
fn an_icmp_probe_is_answered_through_the_child_sa_and_consumed_as_the_drill_reply() {
    let mut rig = Rig::new();
    for id in [0u64, 1, 65_537] {
        let r = rig.round(id, |_| {});
        assert_eq!(
            r,
            NetAction::Consumed,
            "probe {id}: the reply is not for the TUN"
        );
        let replies: Vec<u64> = std::iter::from_fn(|| rig.eng[0].poll_event())
            .filter_map(|e| match e {
                Event::ProbeReply { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(replies, vec![id]);
    }
    // Ordinary pings between the same hosts, with another identifier, pass through.
    let r = rig.round(9, |p| {
        p[24] ^= 0x55;
        p[22..24].fill(0);
        let c = checksum(&p[20..]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
    });
    assert!(matches!(r, NetAction::Deliver { .. }), "{r:?}");
}

#[test]
fn a_damaged_probe_reply_is_counted_malformed_and_dropped() {
    let mut rig = Rig::new();
    let before = rig.eng[0].drop_counters().get(DropReason::Malformed);
    // The tag's first byte, with a checksum that matches the damage: only the tag is wrong.
    let r = rig.round(3, |p| {
        p[28] ^= 0x01;
        p[22..24].fill(0);
        let c = checksum(&p[20..]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
    });
    assert_eq!(r, NetAction::Drop(DropReason::Malformed));
    // A bad checksum.
    let r = rig.round(4, |p| p[40] ^= 0xff);
    assert_eq!(r, NetAction::Drop(DropReason::Malformed));
    assert_eq!(
        rig.eng[0].drop_counters().get(DropReason::Malformed),
        before + 2
    );
    assert!(
        std::iter::from_fn(|| rig.eng[0].poll_event())
            .all(|e| !matches!(e, Event::ProbeReply { .. })),
        "no reply event for a damaged reply"
    );
}

#[test]
fn ikev2_drill_probes_allocate_nothing() {
    let mut rig = Rig::new();
    // Warm up: the event queue reaches its working size.
    for id in 0..100 {
        assert_eq!(rig.round(id, |_| {}), NetAction::Consumed);
        while rig.eng[0].poll_event().is_some() {}
    }
    // The counter counts (so a zero below means something).
    let probe = Region::new();
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(probe.change().allocations >= 1);
    drop(v);
    let (mut allocations, mut replies) = (0usize, 0u64);
    for id in 100..100 + PROBES {
        let region = Region::new();
        let r = rig.round(id, |_| {});
        while let Some(e) = rig.eng[0].poll_event() {
            replies += u64::from(matches!(e, Event::ProbeReply { .. }));
        }
        allocations += region.change().allocations;
        assert_eq!(r, NetAction::Consumed);
    }
    assert_eq!(replies, PROBES);
    assert_eq!(
        allocations, 0,
        "allocations during {PROBES} probes and replies"
    );
}
