//! Criterion benchmarks: ESP seal and open in place at 64, 512, 1420 and 8192 bytes, with ESN
//! (`esp/`) and without (`esp32/`: 32-bit sequence numbers, a 1024-packet window, any peer IV),
//! and full handshakes (initiation + response + completion, both ends) per second.
//!
//! `cargo bench -p tandem-crypto --bench crypto`
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_crypto::esp::{HEADROOM, NEXT_HEADER_IPV4, TAILROOM};
use tandem_crypto::handshake::MAX_MESSAGE_LEN;
use tandem_crypto::{
    InboundParams, InboundSa, Initiator, OutboundSa, PeerIv, Psk, Responder, ResponderOutcome,
    SaKeys, SeqMode, Spi, StaticSecret, Tai64N, WindowSize,
};

const SIZES: [usize; 4] = [64, 512, 1420, 8192];

fn keys() -> SaKeys {
    SaKeys {
        key: [7; 32],
        salt: [1, 2, 3, 4],
    }
}

fn spi() -> Spi {
    Spi::new(0x1000).unwrap()
}

fn esp(c: &mut Criterion) {
    esp_mode(c, "esp", SeqMode::Esn, InboundParams::default());
    let ikev2 = InboundParams {
        seq: SeqMode::Bits32,
        window: WindowSize::new(1024).unwrap(),
        peer_iv: PeerIv::Any,
    };
    esp_mode(c, "esp32", SeqMode::Bits32, ikev2);
}

fn esp_mode(c: &mut Criterion, group: &str, mode: SeqMode, params: InboundParams) {
    let mut g = c.benchmark_group(group);
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut out = OutboundSa::with_mode(spi(), keys(), mode);
        let mut buf = vec![0x5au8; HEADROOM + size + TAILROOM];
        g.bench_function(format!("seal/{size}"), |b| {
            b.iter(|| {
                // Re-sealing the previous ciphertext is fine for timing: same length, new seq.
                let s = out
                    .seal(
                        black_box(&mut buf),
                        HEADROOM..HEADROOM + size,
                        NEXT_HEADER_IPV4,
                    )
                    .unwrap();
                black_box(s);
            })
        });

        let mut sealer = OutboundSa::with_mode(spi(), keys(), mode);
        let mut inb = InboundSa::with_params(spi(), keys(), params);
        g.bench_function(format!("open/{size}"), |b| {
            b.iter_batched_ref(
                || {
                    let mut buf = vec![0x5au8; HEADROOM + size + TAILROOM];
                    let s = sealer
                        .seal(&mut buf, HEADROOM..HEADROOM + size, NEXT_HEADER_IPV4)
                        .unwrap();
                    (buf, s.datagram)
                },
                |(buf, d)| {
                    black_box(inb.open(black_box(buf), d.clone()).unwrap());
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let a = StaticSecret::generate(&mut rng);
    let b = StaticSecret::generate(&mut rng);
    let psk = Psk::generate(&mut rng);
    let mut resp = Responder::new(&b, a.public_key(), &psk).unwrap();
    let now = Instant::now();
    let addr = "192.0.2.1:4500".parse().unwrap();
    let mut n: u64 = 0;
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("full", |bench| {
        bench.iter(|| {
            n += 1;
            let mut m1 = [0u8; MAX_MESSAGE_LEN];
            let mut m2 = [0u8; MAX_MESSAGE_LEN];
            let (mut init, len) = Initiator::start(
                &a,
                &b.public_key(),
                &psk,
                spi(),
                Tai64N::from_unix(
                    1_700_000_000 + n / 1_000_000_000,
                    (n % 1_000_000_000) as u32,
                ),
                None,
                &mut rng,
                &mut m1,
            )
            .unwrap();
            let o = resp
                .handle_initiation(&m1[..len], addr, false, spi(), now, &mut rng, &mut m2)
                .unwrap();
            let ResponderOutcome::Established { response_len, .. } = o else {
                panic!("expected established")
            };
            black_box(init.consume_response(&m2[..response_len]).unwrap());
        })
    });
    g.finish();
}

/// The bare AEAD (ring, same key setup) at the same sizes: the floor that `seal` adds its
/// framing to, measured in the same run so the ratio survives a noisy machine.
fn raw_aead(c: &mut Criterion) {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
    let mut g = c.benchmark_group("ring_aes256gcm");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5au8; size];
        let mut n: u64 = 0;
        g.bench_function(format!("seal/{size}"), |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from([0u8; 12]),
                        black_box(&mut buf),
                    )
                    .unwrap();
                let _ = black_box(tag);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, esp, raw_aead, handshake);
criterion_main!(benches);
