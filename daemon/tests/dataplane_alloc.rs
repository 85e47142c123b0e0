//! Zero allocations per packet: a counting `#[global_allocator]` watches the daemon's own
//! data-path functions (`seal_batch` / `open_batch`) over a steady-state run of full batches in
//! both directions between two engines. Only the test's own thread is counted (the data path runs
//! there, and tandem-testkit's allocator counts per thread): the test harness's other threads may
//! allocate at any time, which made a process-wide count flaky under load.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use tandem::dataplane::batch::{BATCH, Batch, SlotDest};
use tandem::dataplane::loopback::{self, EnginePair, TUNNEL};
use tandem::dataplane::path::{open_batch, seal_batch};
use tandem_testkit::{CountingAlloc, Region};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// One round: a full batch A -> B and a full batch B -> A. Returns packets delivered.
fn round(
    pair: &mut EnginePair,
    a_tx: &mut Batch,
    b_rx: &mut Batch,
    b_tx: &mut Batch,
    a_rx: &mut Batch,
) -> usize {
    let now = pair.now;
    let mut delivered = 0;
    loopback::fill_from_tun(
        a_tx,
        Ipv4Addr::new(10, 1, 0, 5),
        Ipv4Addr::new(10, 2, 0, 7),
        1400,
    );
    let out = seal_batch(&mut pair.a, a_tx, now);
    assert_eq!(out.to_net, BATCH);
    loopback::wire(a_tx, b_rx, loopback::A_ADDR);
    let out = open_batch(&mut pair.b, TUNNEL, b_rx, now);
    delivered += out.to_tun;

    loopback::fill_from_tun(
        b_tx,
        Ipv4Addr::new(10, 2, 0, 7),
        Ipv4Addr::new(10, 1, 0, 5),
        64,
    );
    let out = seal_batch(&mut pair.b, b_tx, now);
    assert_eq!(out.to_net, BATCH);
    loopback::wire(b_tx, a_rx, loopback::B_ADDR);
    let out = open_batch(&mut pair.a, TUNNEL, a_rx, now);
    delivered += out.to_tun;
    delivered
}

#[test]
fn the_data_path_allocates_nothing_per_packet_in_steady_state() {
    let mut pair = EnginePair::new();
    assert!(pair.establish(), "the tunnel never came up");
    let len = Batch::slot_len(tandem_engine::HEADROOM, 1500, tandem_engine::TAILROOM);
    let (mut a_tx, mut b_rx, mut b_tx, mut a_rx) = (
        Batch::new(len),
        Batch::new(len),
        Batch::new(len),
        Batch::new(len),
    );

    // Warm-up: first-packet effects (lazy tables, event queues) are allowed once.
    for _ in 0..4 {
        assert_eq!(
            round(&mut pair, &mut a_tx, &mut b_rx, &mut b_tx, &mut a_rx),
            2 * BATCH
        );
    }

    let region = Region::new();
    let mut delivered = 0;
    for _ in 0..200 {
        delivered += round(&mut pair, &mut a_tx, &mut b_rx, &mut b_tx, &mut a_rx);
    }
    let stats = region.change();
    let allocs = stats.allocations + stats.reallocations;

    assert_eq!(delivered, 200 * 2 * BATCH, "every packet must arrive");
    assert!(
        a_rx.slots
            .iter()
            .take(BATCH)
            .all(|s| s.dest == SlotDest::Tun)
    );
    assert_eq!(allocs, 0, "{allocs} allocations over {delivered} packets");
}

/// The UDP GRO receive path: a batch sealed by A, laid end to end in one buffer as the kernel
/// hands a coalesced message over, opened by B in place, segment by segment. Every datagram
/// must come out as the packet A was given, and nothing may be allocated.
#[test]
fn opening_a_coalesced_message_in_place_allocates_nothing_and_delivers_every_datagram() {
    use tandem::dataplane::path::{Receiver, open_coalesced};
    let mut pair = EnginePair::new();
    assert!(pair.establish(), "the tunnel never came up");
    let len = Batch::slot_len(tandem_engine::HEADROOM, 1500, tandem_engine::TAILROOM);
    let mut a_tx = Batch::new(len);
    let mut area = vec![0u8; BATCH * len];
    let (src, dst) = (Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 2, 0, 7));
    // One round: seal a full batch of 1400 B packets, lay the datagrams end to end (all the
    // same size, as a GRO message), open them. Returns (delivered, bytes that matched).
    let mut round = |pair: &mut EnginePair, area: &mut [u8]| -> (usize, usize) {
        let now = pair.now;
        loopback::fill_from_tun(&mut a_tx, src, dst, 1400);
        let want_len = a_tx.slots[0].len;
        let out = seal_batch(&mut pair.a, &mut a_tx, now);
        assert_eq!(out.to_net, BATCH);
        let seg = a_tx.slots[0].len;
        for (i, s) in a_tx.slots[..BATCH].iter().enumerate() {
            assert_eq!(s.len, seg, "equal packets seal to equal datagrams");
            area[i * seg..(i + 1) * seg].copy_from_slice(&s.buf[s.start..s.start + s.len]);
        }
        let (mut delivered, mut good) = (0, 0);
        let out = open_coalesced(
            &mut pair.b,
            Receiver::Tunnel(TUNNEL),
            loopback::A_ADDR,
            &mut area[..BATCH * seg],
            seg,
            now,
            |d, pkt, _| {
                delivered += 1;
                // The inner packet: IPv4 to `dst`, as long as what went in.
                if pkt.len() == want_len && d[pkt.start + 16..pkt.start + 20] == dst.octets() {
                    good += 1;
                }
            },
        );
        assert_eq!(out.to_tun, delivered);
        (delivered, good)
    };
    for _ in 0..4 {
        assert_eq!(round(&mut pair, &mut area), (BATCH, BATCH));
    }
    let region = Region::new();
    let (mut delivered, mut good) = (0, 0);
    for _ in 0..200 {
        let (d, g) = round(&mut pair, &mut area);
        delivered += d;
        good += g;
    }
    let stats = region.change();
    let allocs = stats.allocations + stats.reallocations;
    assert_eq!(
        (delivered, good),
        (200 * BATCH, 200 * BATCH),
        "every datagram must arrive intact"
    );
    assert_eq!(allocs, 0, "{allocs} allocations over {delivered} packets");
}
