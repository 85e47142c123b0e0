// Shared by the fuzz targets: fixed keys and mac1 recomputation (so that mutated messages get
// past the cheap mac1 check and reach the DH and AEAD paths).
#![allow(dead_code)]

use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use tandem_crypto::{Psk, PublicKey, StaticSecret};

pub fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed([42; 32])
}

pub fn keys() -> (StaticSecret, StaticSecret, Psk) {
    let mut r = ChaCha20Rng::from_seed([1; 32]);
    (
        StaticSecret::generate(&mut r),
        StaticSecret::generate(&mut r),
        Psk::generate(&mut r),
    )
}

/// Rewrites mac1 (the 16 bytes before the final 16) for `receiver`.
pub fn remac(msg: &mut [u8], receiver: &PublicKey) {
    if msg.len() < 40 {
        return;
    }
    let n = msg.len();
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"mac1----")
        .chain_update(receiver.as_bytes())
        .finalize()
        .into();
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("any key length");
    m.update(&msg[..n - 32]);
    let full = m.finalize().into_bytes();
    msg[n - 32..n - 16].copy_from_slice(&full[..16]);
}

/// XORs `mask` over `msg` starting at `from`.
pub fn mutate(msg: &mut [u8], from: usize, mask: &[u8]) {
    for (b, m) in msg.iter_mut().skip(from).zip(mask) {
        *b ^= m;
    }
}
