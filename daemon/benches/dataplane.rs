//! The per-packet path through the daemon's own functions, without syscalls: a TUN-sized batch
//! sealed by one engine (`seal_batch`, TUN buffer in -> datagram out) and opened by the other
//! (`open_batch`, datagram in -> TUN buffer out), in packets/s and bytes/s of inner packets.
//!
//! `cargo bench -p tandem --bench dataplane`
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tandem::dataplane::batch::{BATCH, Batch};
use tandem::dataplane::loopback::{self, EnginePair, TUNNEL};
use tandem::dataplane::path::{open_batch, seal_batch};

fn per_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("dataplane");
    for len in [64usize, 1400] {
        let mut pair = EnginePair::new();
        assert!(pair.establish());
        let slot = Batch::slot_len(tandem_engine::HEADROOM, 1500, tandem_engine::TAILROOM);
        let (mut tx, mut rx) = (Batch::new(slot), Batch::new(slot));
        let src = Ipv4Addr::new(10, 1, 0, 5);
        let dst = Ipv4Addr::new(10, 2, 0, 7);

        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("seal_batch_pps", len), |b| {
            b.iter(|| {
                loopback::fill_from_tun(&mut tx, src, dst, len);
                let out = seal_batch(&mut pair.a, &mut tx, pair.now);
                assert_eq!(out.to_net, BATCH);
            })
        });
        group.throughput(Throughput::Bytes((BATCH * len) as u64));
        group.bench_function(BenchmarkId::new("seal_open_round_trip_bytes", len), |b| {
            b.iter(|| {
                loopback::fill_from_tun(&mut tx, src, dst, len);
                seal_batch(&mut pair.a, &mut tx, pair.now);
                loopback::wire(&mut tx, &mut rx, loopback::A_ADDR);
                let out = open_batch(&mut pair.b, TUNNEL, &mut rx, pair.now);
                assert_eq!(out.to_tun, BATCH);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_packet);
criterion_main!(benches);
