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
