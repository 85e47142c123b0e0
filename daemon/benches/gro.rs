//! TUN-side GRO: 64 in-order TCP segments of 1448 payload bytes (the timestamps-option MSS of a
//! 1500-byte MTU) coalesced into GSO writes (45 fill the 64 KiB IPv4 limit, 19 more make a
//! second), in bytes/s of payload.
//!
//! `cargo bench -p tandem --bench gro`
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem::dataplane::gro::{MAX_SEGMENTS, TunGro};
use tandem::dataplane::loopback::ipv4_tcp_segment;

/// Payload of one segment: a 1500-byte MTU less IPv4 (20), TCP (20) and timestamps (12).
const PAYLOAD: usize = 1448;
/// TCP flags of every segment: ACK only, so none closes the run.
const TCP_ACK: u8 = 0x10;

fn coalesce(c: &mut Criterion) {
    let segments: Vec<Vec<u8>> = (0..MAX_SEGMENTS as u32)
        .map(|i| ipv4_tcp_segment(1 + i * PAYLOAD as u32, TCP_ACK, PAYLOAD, i as u8))
        .collect();
    let mut gro = TunGro::new();
    let mut group = c.benchmark_group("gro");
    group.throughput(Throughput::Bytes((MAX_SEGMENTS * PAYLOAD) as u64));
    group.bench_function("coalesce_64x1448", |b| {
        b.iter(|| {
            let mut writes = 0usize;
            let mut write = |w: &[u8]| {
                std::hint::black_box(w);
                writes += 1;
            };
            for s in &segments {
                assert!(gro.push(std::hint::black_box(s), &mut write));
            }
            gro.flush(&mut write);
            assert_eq!(writes, 2, "45 segments, then 19");
        })
    });
    group.finish();
}

criterion_group!(benches, coalesce);
criterion_main!(benches);
