//! The initiator's response and cookie-reply processing, on arbitrary bytes and on a real
//! response with arbitrary bit flips and a recomputed mac1.
//! Invariants: no panic; only the unmodified response completes the handshake; a failed
//! response leaves the initiator pending.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_crypto::handshake::MAX_MESSAGE_LEN;
use tandem_crypto::{Initiator, PublicKey, Responder, ResponderOutcome, Spi, Tai64N};

struct Pending {
    initiator: Initiator,
    response: Vec<u8>,
    initiator_public: PublicKey,
}

/// A pending initiator and the valid response to it; rebuilt only after it completes (a failed
/// response keeps it pending, which the target also checks).
fn fresh() -> Pending {
    let (a, b, psk) = common::keys();
    let mut rng = common::rng();
    let spi = Spi::new(0x300).expect("valid SPI");
    let mut m1 = [0u8; MAX_MESSAGE_LEN];
    let (initiator, n) = Initiator::start(
        &a,
        &b.public_key(),
        &psk,
        spi,
        Tai64N::from_unix(1, 0),
        None,
        &mut rng,
        &mut m1,
    )
    .expect("initiation");
    let mut resp = Responder::new(&b, a.public_key(), &psk).expect("valid peer key");
    let mut m2 = [0u8; MAX_MESSAGE_LEN];
    let src = "192.0.2.1:4500".parse().expect("address");
    let o = resp
        .handle_initiation(&m1[..n], src, false, spi, origin(), &mut rng, &mut m2)
        .expect("valid initiation");
    let ResponderOutcome::Established { response_len, .. } = o else {
        panic!("not under load: no cookie reply");
    };
    Pending {
        initiator,
        response: m2[..response_len].to_vec(),
        initiator_public: a.public_key(),
    }
}

fn origin() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fn state() -> &'static Mutex<Pending> {
    static S: OnceLock<Mutex<Pending>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(fresh()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut guard = state().lock().unwrap_or_else(|e| e.into_inner());
    let p = &mut *guard;
    assert!(p.initiator.is_awaiting_response());
    if mode & 1 == 0 {
        let _ = p.initiator.consume_cookie_reply(rest, origin());
        if p.initiator.consume_response(rest).is_ok() {
            *p = fresh();
        }
        return;
    }
    let mut msg = p.response.clone();
    let n = msg.len();
    common::mutate(&mut msg, 0, rest);
    let changed = rest.iter().take(n - 32).any(|&m| m != 0);
    common::remac(&mut msg, &p.initiator_public);
    let r = p.initiator.consume_response(&msg);
    assert_eq!(
        r.is_ok(),
        !changed,
        "modified = {changed}, result = {:?}",
        r.err()
    );
    if r.is_ok() {
        *p = fresh();
    }
});
