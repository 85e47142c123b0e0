//! End-to-end: a handshake between our initiator and our responder, then ESP both ways.
#![allow(clippy::unwrap_used)]
// Tests take one real `Instant` as the origin of their virtual time; the crate itself never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_crypto::esp::{HEADROOM, NEXT_HEADER_IPV4, TAILROOM};
use tandem_crypto::handshake::MAX_MESSAGE_LEN;
use tandem_crypto::{Initiator, Psk, Responder, ResponderOutcome, Spi, StaticSecret, Tai64N};

fn src() -> SocketAddr {
    "192.0.2.1:4500".parse().unwrap()
}

#[test]
fn handshake_establishes_matching_sas_and_esp_flows_both_ways() {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let a = StaticSecret::generate(&mut rng);
    let b = StaticSecret::generate(&mut rng);
    let psk = Psk::generate(&mut rng);
    let now = Instant::now();
    let mut msg = [0u8; MAX_MESSAGE_LEN];
    let (mut init, n) = Initiator::start(
        &a,
        &b.public_key(),
        &psk,
        Spi::new(1000).unwrap(),
        Tai64N::from_unix(1_700_000_000, 5),
        None,
        &mut rng,
        &mut msg,
    )
    .unwrap();
    let mut resp = Responder::new(&b, a.public_key(), &psk).unwrap();
    let mut out = [0u8; MAX_MESSAGE_LEN];
    let ResponderOutcome::Established {
        established: rest,
        response_len,
    } = resp
        .handle_initiation(
            &msg[..n],
            src(),
            false,
            Spi::new(2000).unwrap(),
            now,
            &mut rng,
            &mut out,
        )
        .unwrap()
    else {
        panic!("expected an established outcome");
    };
    let mut iest = init.consume_response(&out[..response_len]).unwrap();
    let mut rest = *rest;
    assert_eq!(iest.handshake_hash, rest.handshake_hash);
    assert_eq!(iest.local_spi, rest.remote_spi);
    assert_eq!(iest.remote_spi.get(), 1000 + 1000);
    assert_eq!(iest.outbound.keys().key, rest.inbound.keys().key);
    assert_ne!(iest.outbound.keys().key, iest.inbound.keys().key);

    for len in [0usize, 1, 2, 3, 4, 100, 1420] {
        let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
        for (i, b) in buf[HEADROOM..HEADROOM + len].iter_mut().enumerate() {
            *b = i as u8;
        }
        let expect = buf[HEADROOM..HEADROOM + len].to_vec();
        let sealed = iest
            .outbound
            .seal(&mut buf, HEADROOM..HEADROOM + len, NEXT_HEADER_IPV4)
            .unwrap();
        let opened = rest.inbound.open(&mut buf, sealed.datagram).unwrap();
        assert_eq!(&buf[opened.payload.clone()], &expect[..]);
        assert_eq!(opened.next_header, NEXT_HEADER_IPV4);

        let sealed = rest
            .outbound
            .seal(&mut buf, HEADROOM..HEADROOM + len, NEXT_HEADER_IPV4)
            .unwrap();
        let opened = iest.inbound.open(&mut buf, sealed.datagram).unwrap();
        assert_eq!(&buf[opened.payload], &expect[..]);
    }
}
