//! What an IKE_SA_INIT costs a responder: answered with a stateless COOKIE
//! (`CookieJar::admit` under load) against admitted (`IkeSa::respond` + `handle_datagram`: a
//! DH key pair, the shared secret, the key schedule and the response), for the ECDH groups
//! tandem offers. The ratio is what the COOKIE gate saves per spoofed request under a flood.
//!
//! `cargo bench -p tandem-ike --bench cookie`
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_ike::ts::ipv4_prefix;
use tandem_ike::{
    Admission, AdmissionPolicy, Config, CookieJar, DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS,
    Identity, IkeSa, Psk,
};

fn config(local: Ipv4Addr, remote: Ipv4Addr) -> Config {
    Config {
        psk: Psk::new(&b"bench psk"[..]),
        local_id: Identity::Ipv4(local),
        remote_id: Identity::Ipv4(remote),
        ike_proposals: DEFAULT_IKE_PROPOSALS.to_vec(),
        esp_proposals: DEFAULT_ESP_PROPOSALS.to_vec(),
        local_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 10, 0, 0), 16)],
        remote_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 20, 0, 0), 16)],
        nat_t: None,
    }
}

fn bench(c: &mut Criterion) {
    let a = Ipv4Addr::new(192, 0, 2, 1);
    let b = Ipv4Addr::new(198, 51, 100, 2);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let from = IpAddr::V4(a);
    let mut g = c.benchmark_group("ike_sa_init");
    for p in DEFAULT_IKE_PROPOSALS {
        let mut ca = config(a, b);
        ca.ike_proposals = vec![p];
        let init = IkeSa::initiate(ca, Instant::now(), &mut rng)
            .poll_transmit()
            .unwrap();
        let name = p.to_string();
        let policy = AdmissionPolicy {
            threshold: 0,
            ..AdmissionPolicy::default()
        };
        let mut jar = CookieJar::new(policy, Instant::now(), &mut rng);
        assert!(matches!(jar.admit(&init, from, 0), Admission::Cookie(_)));
        g.bench_function(format!("cookie_answer/{name}"), |bn| {
            bn.iter(|| black_box(jar.admit(black_box(&init), from, 0)))
        });
        g.bench_function(format!("admitted/{name}"), |bn| {
            bn.iter_batched(
                || IkeSa::respond(config(b, a)),
                |mut sa| {
                    sa.handle_datagram(Instant::now(), &init, &mut rng).unwrap();
                    black_box(sa.poll_transmit().unwrap())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
