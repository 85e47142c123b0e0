//! What a full IKEv2 handshake (IKE_SA_INIT + IKE_AUTH with the first Child SA, PSK) costs, per
//! proposal tandem offers, between two sans-IO [`IkeSa`]s in one thread (no network):
//!
//! - `handshake/full/P`: both ends, all four messages, until both report `Established`;
//! - `handshake/responder/P`: only the responder's share of the same handshakes (its two
//!   `handle_datagram` calls and the answers), timed inside each full handshake. Its inverse is
//!   the most handshakes per second one core can answer;
//! - `handshake/dh/G`: one ephemeral key pair and one shared secret in group G: the DH work each
//!   end does once per handshake, to show how much of the handshake it is.
//!
//! `cargo bench -p tandem-ike --bench handshake` (docs/operations.md, "Handshake time and rate").
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_ike::ts::ipv4_prefix;
use tandem_ike::{
    Config, DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, Event, FirstChild, Identity, IkeProposal,
    IkeSa, KeyShare, Psk,
};

fn config(local: Ipv4Addr, remote: Ipv4Addr, p: IkeProposal, ts: [(Ipv4Addr, u8); 2]) -> Config {
    Config {
        psk: Psk::new(&b"bench psk, 32 bytes of it......."[..]),
        local_id: Identity::Ipv4(local),
        remote_id: Identity::Ipv4(remote),
        ike_proposals: vec![p],
        esp_proposals: DEFAULT_ESP_PROPOSALS.to_vec(),
        local_ts: vec![ipv4_prefix(ts[0].0, ts[0].1)],
        remote_ts: vec![ipv4_prefix(ts[1].0, ts[1].1)],
        nat_t: None,
    }
}

/// One complete handshake; returns the time the responder spent in it.
fn handshake(p: IkeProposal, rng: &mut ChaCha20Rng) -> Duration {
    let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    let (office, vpc) = (
        (Ipv4Addr::new(10, 10, 0, 0), 16),
        (Ipv4Addr::new(10, 20, 0, 0), 16),
    );
    let now = Instant::now();
    let mut ini = IkeSa::initiate(config(a, b, p, [office, vpc]), now, rng);
    let mut resp = IkeSa::respond(config(b, a, p, [vpc, office]));
    let mut in_responder = Duration::ZERO;
    // IKE_SA_INIT, then IKE_AUTH: request to the responder, answer back.
    for _ in 0..2 {
        let req = ini.poll_transmit().unwrap();
        let t = Instant::now();
        resp.handle_datagram(now, &req, rng).unwrap();
        let answer = resp.poll_transmit().unwrap();
        in_responder += t.elapsed();
        ini.handle_datagram(now, &answer, rng).unwrap();
    }
    for sa in [&mut ini, &mut resp] {
        match sa.poll_event() {
            Some(Event::Established(e)) => {
                assert!(matches!(e.child, FirstChild::Created(_)));
                black_box(e);
            }
            other => panic!("not established: {other:?}"),
        }
    }
    in_responder
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut g = c.benchmark_group("handshake");
    for p in DEFAULT_IKE_PROPOSALS {
        let name = p.to_string();
        g.bench_function(format!("full/{name}"), |bn| {
            bn.iter(|| handshake(p, &mut rng))
        });
        g.bench_function(format!("responder/{name}"), |bn| {
            bn.iter_custom(|iters| (0..iters).map(|_| handshake(p, &mut rng)).sum())
        });
        let peer = KeyShare::generate(p.group, &mut rng);
        g.bench_function(format!("dh/{:?}", p.group), |bn| {
            bn.iter(|| {
                let mine = KeyShare::generate(p.group, &mut rng);
                black_box(mine.agree(black_box(peer.public())).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
