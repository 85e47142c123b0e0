//! The responder's initiation processing, on arbitrary bytes and on a real initiation with
//! arbitrary bit flips and a recomputed mac1 (so the DH and AEAD paths are reached).
//! Invariants: no panic; only the unmodified initiation is accepted.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_crypto::handshake::MAX_MESSAGE_LEN;
use tandem_crypto::{Initiator, PublicKey, Responder, ResponderOutcome, Spi, Tai64N};

struct Fixture {
    origin: Instant,
    responder: Responder,
    responder_public: PublicKey,
    initiation: Vec<u8>,
}

/// Keys, a fresh responder and one valid initiation, made once (the DHs dominate otherwise).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (a, b, psk) = common::keys();
        let mut msg = [0u8; MAX_MESSAGE_LEN];
        let (_, n) = Initiator::start(
            &a,
            &b.public_key(),
            &psk,
            Spi::new(0x200).expect("valid SPI"),
            Tai64N::from_unix(1, 0),
            None,
            &mut common::rng(),
            &mut msg,
        )
        .expect("initiation");
        Fixture {
            origin: Instant::now(),
            responder: Responder::new(&b, a.public_key(), &psk).expect("valid peer key"),
            responder_public: b.public_key(),
            initiation: msg[..n].to_vec(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut resp = f.responder.clone();
    let mut rng = common::rng();
    let mut out = [0u8; MAX_MESSAGE_LEN];
    let src: SocketAddr = "192.0.2.1:4500".parse().expect("address");
    let spi = Spi::new(0x300).expect("valid SPI");
    let under_load = mode & 2 != 0;
    if mode & 1 == 0 {
        let _ = resp.handle_initiation(rest, src, under_load, spi, f.origin, &mut rng, &mut out);
        return;
    }
    let mut msg = f.initiation.clone();
    let n = msg.len();
    common::mutate(&mut msg, 0, rest);
    let changed = rest.iter().take(n - 32).any(|&m| m != 0);
    common::remac(&mut msg, &f.responder_public);
    let r = resp.handle_initiation(&msg, src, false, spi, f.origin, &mut rng, &mut out);
    if changed {
        assert!(r.is_err(), "a modified initiation was accepted");
    } else {
        assert!(matches!(r, Ok(ResponderOutcome::Established { .. })));
    }
});
