//! The Noise symmetric state for `Noise_IKpsk2_25519_AESGCM_SHA256` (Noise spec rev. 34 §5.1–5.2),
//! specialised: HASH = SHA-256, HKDF built from HMAC-SHA256 as in §4.3, cipher AES-256-GCM with
//! the nonce `0^32 || n` (big-endian 64-bit counter, §12.4). Internal to the crate.

use hmac::{Hmac, KeyInit, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The protocol name: exactly 32 bytes = HASHLEN, so `h` starts as the name itself (§5.2).
pub(crate) const PROTOCOL_NAME: &[u8; 32] = b"Noise_IKpsk2_25519_AESGCM_SHA256";
/// The protocol version at the start of the prologue (docs/protocol.md, "Handshake").
pub(crate) const PROLOGUE_VERSION: &[u8] = b"tandem v2";
/// HMAC-SHA256 message, keyed by the tunnel PSK, whose tag completes the prologue.
pub(crate) const PROLOGUE_BINDING: &[u8] = b"tandem v2 tunnel binding";
/// Prologue length: version (9) || binding tag (32).
pub const PROLOGUE_LEN: usize = 9 + 32;
/// AEAD tag length.
pub(crate) const TAG_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length.
    #[allow(clippy::expect_used)]
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    Zeroizing::new(m.finalize().into_bytes().into())
}

pub(crate) fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Noise HKDF (§4.3) with two outputs.
fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let temp = hmac(ck, &[ikm]);
    let o1 = hmac(&temp[..], &[&[1u8]]);
    let o2 = hmac(&temp[..], &[&o1[..], &[2u8]]);
    (o1, o2)
}

type Secret32 = Zeroizing<[u8; 32]>;

/// Noise HKDF (§4.3) with three outputs.
fn hkdf3(ck: &[u8; 32], ikm: &[u8]) -> (Secret32, Secret32, Secret32) {
    let temp = hmac(ck, &[ikm]);
    let o1 = hmac(&temp[..], &[&[1u8]]);
    let o2 = hmac(&temp[..], &[&o1[..], &[2u8]]);
    let o3 = hmac(&temp[..], &[&o2[..], &[3u8]]);
    (o1, o2, o3)
}

/// AES-256-GCM with a Noise nonce; `in_out` is plaintext || room for the tag on encrypt.
pub(crate) fn aead_seal(key: &[u8; 32], n: u64, ad: &[u8], in_out: &mut [u8]) {
    let (msg, tag_room) = in_out.split_at_mut(in_out.len() - TAG_LEN);
    #[allow(clippy::expect_used)]
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    #[allow(clippy::expect_used)]
    let tag = k
        .seal_in_place_separate_tag(noise_nonce(n), Aad::from(ad), msg)
        .expect("message far below the GCM length limit");
    tag_room.copy_from_slice(tag.as_ref());
}

/// Opens `in_out` (ciphertext || tag) in place; the plaintext is `in_out[..len - 16]`.
pub(crate) fn aead_open(key: &[u8; 32], n: u64, ad: &[u8], in_out: &mut [u8]) -> bool {
    #[allow(clippy::expect_used)]
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    k.open_in_place(noise_nonce(n), Aad::from(ad), in_out)
        .is_ok()
}

/// The tunnel-bound prologue: `"tandem v2" || HMAC-SHA256(psk, "tandem v2 tunnel binding")`.
///
/// IKpsk2 mixes the PSK in only at message 2, so without this an initiation authenticates at any
/// responder that knows the initiator's static key, whatever its PSK: a holder of the static key
/// without the PSK could plant a far-future timestamp, and an initiation for one tunnel would be
/// accepted by another tunnel between the same two gateways. The prologue is hashed into `h`,
/// which is the AEAD associated data of the encrypted static key and payload of message 1, so
/// message 1 now authenticates only under the same PSK. The PSK stays secret: only an HMAC tag of
/// it enters the hash, and `h` is never sent.
pub fn prologue(psk: &[u8; 32]) -> [u8; PROLOGUE_LEN] {
    let mut p = [0u8; PROLOGUE_LEN];
    p[..PROLOGUE_VERSION.len()].copy_from_slice(PROLOGUE_VERSION);
    p[PROLOGUE_VERSION.len()..].copy_from_slice(&hmac(psk, &[PROLOGUE_BINDING])[..]);
    p
}

fn noise_nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

/// `ck`, `h`, and the cipher key `k` with its counter.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SymmetricState {
    ck: [u8; 32],
    h: [u8; 32],
    k: Option<[u8; 32]>,
    n: u64,
}

impl SymmetricState {
    /// InitializeSymmetric + MixHash(prologue) + the IK pre-message `<- s`.
    pub(crate) fn new(prologue: &[u8; PROLOGUE_LEN], responder_static: &[u8; 32]) -> Self {
        let mut s = Self {
            ck: *PROTOCOL_NAME,
            h: *PROTOCOL_NAME,
            k: None,
            n: 0,
        };
        s.mix_hash(prologue);
        s.mix_hash(responder_static);
        s
    }

    pub(crate) fn h(&self) -> [u8; 32] {
        self.h
    }

    /// The same chaining key and cipher state with another handshake hash: `ck` and `k` do not
    /// depend on the prologue, `h` does, so one DH result serves every candidate prologue.
    pub(crate) fn with_h(&self, h: [u8; 32]) -> Self {
        let mut s = self.clone();
        s.h = h;
        s
    }

    pub(crate) fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash(&[&self.h, data]);
    }

    pub(crate) fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = *ck;
        self.k = Some(*k);
        self.n = 0;
    }

    pub(crate) fn mix_key_and_hash(&mut self, ikm: &[u8]) {
        let (ck, th, k) = hkdf3(&self.ck, ikm);
        self.ck = *ck;
        self.mix_hash(&th[..]);
        self.k = Some(*k);
        self.n = 0;
    }

    /// EncryptAndHash over `in_out` = plaintext || 16 bytes of room (a key is always set where
    /// this protocol encrypts).
    pub(crate) fn encrypt_and_hash(&mut self, in_out: &mut [u8]) {
        if let Some(k) = &self.k {
            aead_seal(k, self.n, &self.h, in_out);
            self.n += 1;
        }
        self.mix_hash(in_out);
    }

    /// DecryptAndHash in place over ciphertext || tag; `false` if the tag does not verify.
    pub(crate) fn decrypt_and_hash(&mut self, in_out: &mut [u8]) -> bool {
        let h_next = hash(&[&self.h, in_out]);
        if let Some(k) = &self.k {
            if !aead_open(k, self.n, &self.h, in_out) {
                return false;
            }
            self.n += 1;
        }
        self.h = h_next;
        true
    }

    /// Split (§5.2): (initiator->responder, responder->initiator) keys.
    pub(crate) fn split(&self) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        hkdf2(&self.ck, &[])
    }
}
