//! Helpers shared by the integration tests: a seeded RNG, an AES-256-GCM oracle from the
//! independent `aes-gcm` crate, and a handshake between our own two ends.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::Instant;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use tandem_crypto::handshake::MAX_MESSAGE_LEN;
use tandem_crypto::{
    Established, Initiator, Psk, PublicKey, Responder, ResponderOutcome, Spi, StaticSecret, Tai64N,
};

pub fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

pub fn addr() -> SocketAddr {
    "192.0.2.1:4500".parse().unwrap()
}

pub fn spi(v: u32) -> Spi {
    Spi::new(v).unwrap()
}

/// One real `Instant` as the origin of virtual time.
pub fn t0() -> Instant {
    Instant::now()
}

pub fn ts(secs: u64) -> Tai64N {
    Tai64N::from_unix(1_700_000_000 + secs, 0)
}

pub fn oracle_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let c = Aes256Gcm::new_from_slice(key).unwrap();
    c.encrypt(&Nonce::from(*nonce), Payload { msg, aad })
        .unwrap()
}

pub fn oracle_open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let c = Aes256Gcm::new_from_slice(key).unwrap();
    c.decrypt(&Nonce::from(*nonce), Payload { msg: ct, aad })
        .ok()
}

/// mac1 as the module doc of `handshake` defines it, computed here with the `hmac` crate directly.
pub fn mac1(receiver: &PublicKey, msg: &[u8]) -> [u8; 16] {
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"mac1----")
        .chain_update(receiver.as_bytes())
        .finalize()
        .into();
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&key).unwrap();
    m.update(msg);
    let full = m.finalize().into_bytes();
    full[..16].try_into().unwrap()
}

/// Frames a raw Noise message as a tandem control message: marker, type, reserved, message,
/// mac1 for `receiver`, zero mac2.
pub fn frame(ty: u8, noise: &[u8], receiver: &PublicKey) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0, ty, 0, 0, 0];
    v.extend_from_slice(noise);
    let m = mac1(receiver, &v);
    v.extend_from_slice(&m);
    v.extend_from_slice(&[0; 16]);
    v
}

pub struct Pair {
    pub a: StaticSecret,
    pub b: StaticSecret,
    pub psk: Psk,
}

pub fn keys(seed: u8) -> Pair {
    let mut r = rng(seed);
    Pair {
        a: StaticSecret::generate(&mut r),
        b: StaticSecret::generate(&mut r),
        psk: Psk::generate(&mut r),
    }
}

/// A full handshake a (initiator) -> b (responder): (initiator's, responder's) established.
pub fn handshake(seed: u8) -> (Established, Established) {
    let p = keys(seed);
    let mut r = rng(seed.wrapping_add(100));
    let mut msg = [0u8; MAX_MESSAGE_LEN];
    let (mut init, n) = Initiator::start(
        &p.a,
        &p.b.public_key(),
        &p.psk,
        spi(1000),
        ts(0),
        None,
        &mut r,
        &mut msg,
    )
    .unwrap();
    let mut resp = Responder::new(&p.b, p.a.public_key(), &p.psk).unwrap();
    let mut out = [0u8; MAX_MESSAGE_LEN];
    let outcome = resp
        .handle_initiation(&msg[..n], addr(), false, spi(2000), t0(), &mut r, &mut out)
        .unwrap();
    let ResponderOutcome::Established {
        established,
        response_len,
    } = outcome
    else {
        panic!("expected established")
    };
    let i = init.consume_response(&out[..response_len]).unwrap();
    (i, *established)
}
