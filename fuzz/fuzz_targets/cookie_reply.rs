//! The initiator's cookie-reply processing (`Initiator::consume_cookie_reply`), on arbitrary bytes
//! and on a real cookie reply (from a responder under load) with arbitrary bit flips.
//! Invariants: no panic; arbitrary bytes are never accepted; only the unmodified reply is
//! accepted, and the cookie it carries makes the responder (still under load) complete the
//! handshake instead of answering with another cookie.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_crypto::handshake::MAX_MESSAGE_LEN;
use tandem_crypto::{Initiator, Responder, ResponderOutcome, Spi, Tai64N};

fn origin() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fn src() -> SocketAddr {
    "192.0.2.1:4500".parse().expect("address")
}

fn spi() -> Spi {
    Spi::new(0x300).expect("valid SPI")
}

/// A pending initiation and the genuine cookie reply to it, made once (the DHs are slow).
struct Fixture {
    init: Initiator,
    reply: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (a, b, psk) = common::keys();
        let mut rng = common::rng();
        let mut msg = [0u8; MAX_MESSAGE_LEN];
        let (init, n) = Initiator::start(
            &a,
            &b.public_key(),
            &psk,
            spi(),
            Tai64N::from_unix(1, 0),
            None,
            &mut rng,
            &mut msg,
        )
        .expect("initiation");
        let mut resp = Responder::new(&b, a.public_key(), &psk).expect("valid peer key");
        let mut out = [0u8; MAX_MESSAGE_LEN];
        let r = resp
            .handle_initiation(&msg[..n], src(), true, spi(), origin(), &mut rng, &mut out)
            .expect("a valid initiation under load");
        let ResponderOutcome::CookieReply { len } = r else {
            panic!("under load without mac2, the responder must answer with a cookie");
        };
        Fixture {
            init,
            reply: out[..len].to_vec(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    if mode & 1 == 0 {
        assert!(
            f.init.consume_cookie_reply(rest, origin()).is_err(),
            "arbitrary bytes were accepted as a cookie reply"
        );
        return;
    }
    let mut reply = f.reply.clone();
    common::mutate(&mut reply, 0, rest);
    let changed = rest.iter().take(reply.len()).any(|&m| m != 0);
    let got = f.init.consume_cookie_reply(&reply, origin());
    if changed {
        assert!(got.is_err(), "a modified cookie reply was accepted");
        return;
    }
    // The genuine reply: its cookie, as mac2 of a new initiation, gets through a loaded responder
    // (deterministic and slow — five DHs — so checked once per process).
    let cookie = got.expect("the genuine cookie reply");
    assert!(!cookie.is_expired(origin()));
    static ROUND_TRIP: OnceLock<()> = OnceLock::new();
    ROUND_TRIP.get_or_init(cookie_round_trip);
});

fn cookie_round_trip() {
    let (a, b, psk) = common::keys();
    let mut rng = common::rng();
    let mut resp = Responder::new(&b, a.public_key(), &psk).expect("valid peer key");
    let mut msg = [0u8; MAX_MESSAGE_LEN];
    let mut out = [0u8; MAX_MESSAGE_LEN];
    let (init, n) = Initiator::start(
        &a,
        &b.public_key(),
        &psk,
        spi(),
        Tai64N::from_unix(1, 0),
        None,
        &mut rng,
        &mut msg,
    )
    .expect("initiation");
    // A fresh responder has a fresh cookie secret: get its cookie first, then retry with it.
    let r = resp
        .handle_initiation(&msg[..n], src(), true, spi(), origin(), &mut rng, &mut out)
        .expect("cookie reply");
    let ResponderOutcome::CookieReply { len } = r else {
        panic!("expected a cookie reply");
    };
    let cookie = init
        .consume_cookie_reply(&out[..len], origin())
        .expect("genuine cookie reply");
    let (_init2, n2) = Initiator::start(
        &a,
        &b.public_key(),
        &psk,
        spi(),
        Tai64N::from_unix(2, 0),
        Some(&cookie),
        &mut rng,
        &mut msg,
    )
    .expect("initiation with the cookie");
    let r = resp
        .handle_initiation(&msg[..n2], src(), true, spi(), origin(), &mut rng, &mut out)
        .expect("the initiation with mac2 is accepted under load");
    assert!(matches!(r, ResponderOutcome::Established { .. }));
}
