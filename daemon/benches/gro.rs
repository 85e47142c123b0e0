//! TUN-side GRO: 64 in-order TCP segments of 1448 payload bytes (the timestamps-option MSS of a
//! 1500-byte MTU) coalesced into GSO writes (45 fill the 64 KiB IPv4 limit, 19 more make a
//! second), in bytes/s of payload.
//!
//! `cargo bench -p tandem --bench gro`
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem::dataplane::gro::{MAX_SEGMENTS, TunGro};
use tandem_engine::inner::checksum;

/// Payload of one segment: a 1500-byte MTU less IPv4 (20), TCP (20) and timestamps (12).
const PAYLOAD: usize = 1448;
/// IPv4 header plus a TCP header with the timestamps option.
const HEADERS: usize = 20 + 32;

/// An IPv4/TCP segment with valid IPv4 and TCP checksums.
fn segment(seq: u32, fill: u8) -> Vec<u8> {
    let total = HEADERS + PAYLOAD;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 1, 0, 5]);
    p[16..20].copy_from_slice(&[10, 2, 0, 7]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&5001u16.to_be_bytes());
    p[22..24].copy_from_slice(&40000u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&77u32.to_be_bytes());
    p[32] = 8 << 4;
    p[33] = 0x10; // ACK
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in p[HEADERS..].iter_mut().enumerate() {
        *b = fill.wrapping_add(i as u8);
    }
    // RFC 9293 §3.1: the checksum covers a pseudo-header (addresses, zero, protocol, length).
    let mut pseudo = Vec::with_capacity(12 + total - 20);
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((total - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let c = checksum(&pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn coalesce(c: &mut Criterion) {
    let segments: Vec<Vec<u8>> = (0..MAX_SEGMENTS as u32)
        .map(|i| segment(1 + i * PAYLOAD as u32, i as u8))
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
