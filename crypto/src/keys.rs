//! Long-term key material and the small identifier types of the protocol.
//!
//! Invariant: secret bytes live only in types that zeroize on drop and whose `Debug` prints a
//! fingerprint (the first 4 bytes of a SHA-256 over a label and the key), never the bytes.

use std::fmt;
use std::num::NonZeroU32;

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an X25519 key (private or public) and of a PSK.
pub const KEY_LEN: usize = 32;

/// A short, non-secret fingerprint of `bytes`: 4 bytes of SHA-256(label || bytes), as hex.
fn fingerprint(label: &[u8], bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(label);
    h.update(bytes);
    let d: [u8; 32] = h.finalize().into();
    format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// An X25519 public key (a Montgomery u-coordinate).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw bytes (no validation: low-order keys are rejected when a DH would use them).
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The raw bytes, by value.
    pub const fn to_bytes(self) -> [u8; KEY_LEN] {
        self.0
    }

    /// Constant-time equality (the derived `PartialEq` is for maps and tests; protocol code
    /// comparing an authenticated key against the expected peer uses this).
    pub fn ct_eq(&self, other: &PublicKey) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", fingerprint(b"tandem public", &self.0))
    }
}

/// A long-term X25519 private key; zeroized on drop, `Debug` shows the public key's fingerprint.
#[derive(Clone)]
pub struct StaticSecret {
    secret: x25519_dalek::StaticSecret,
    public: PublicKey,
}

impl StaticSecret {
    /// From the 32 raw private-key bytes (clamping happens inside the scalar multiplication).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let secret = x25519_dalek::StaticSecret::from(*bytes);
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// A fresh key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        Self::from_bytes(*bytes)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The raw private-key bytes (for `tandem genkey`); the caller keeps them zeroizing.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// X25519 with a peer public key; `None` if the result is all-zero (low-order peer point).
    pub(crate) fn diffie_hellman(&self, peer: &PublicKey) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        non_zero(Zeroizing::new(shared.to_bytes()))
    }
}

/// Rejects the all-zero X25519 output (RFC 7748 §6.1), in constant time.
pub(crate) fn non_zero(shared: Zeroizing<[u8; KEY_LEN]>) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    if bool::from(shared.ct_eq(&[0u8; KEY_LEN])) {
        None
    } else {
        Some(shared)
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StaticSecret(public {})",
            fingerprint(b"tandem public", &self.public.0)
        )
    }
}

impl ZeroizeOnDrop for StaticSecret {}

/// A 32-byte pre-shared key (one per tunnel); zeroized on drop, `Debug` shows a fingerprint.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Psk([u8; KEY_LEN]);

impl Psk {
    /// From the raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh PSK from `rng` (for `tandem genpsk`).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut psk = Self([0; KEY_LEN]);
        rng.fill_bytes(&mut psk.0);
        psk
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk({})", fingerprint(b"tandem psk", &self.0))
    }
}

/// A Security Parameter Index: chosen by the receiver, >= 256, never 0 (RFC 4303 §2.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Spi(NonZeroU32);

impl Spi {
    /// The smallest SPI we use: 1..=255 are reserved by IANA (RFC 4303 §2.1).
    pub const MIN: u32 = 256;

    /// `Some` if `value >= 256`.
    pub const fn new(value: u32) -> Option<Self> {
        if value < Self::MIN {
            return None;
        }
        match NonZeroU32::new(value) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// A random valid SPI.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        loop {
            if let Some(spi) = Self::new(rng.next_u32()) {
                return spi;
            }
        }
    }

    /// The value on the wire.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}", self.0.get())
    }
}

/// A TAI64N timestamp (12 bytes: 8 bytes `2^62 + seconds`, 4 bytes nanoseconds, big-endian), as
/// in WireGuard; byte order equals time order, so `Ord` is the time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// Encoded length.
    pub const LEN: usize = 12;
    /// TAI64 label offset (<https://cr.yp.to/libtai/tai64.html>).
    const BASE: u64 = 1 << 62;

    /// From seconds and nanoseconds since the UNIX epoch (as `SystemTime` gives them).
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&Self::BASE.saturating_add(secs).to_be_bytes());
        b[8..].copy_from_slice(&nanos.to_be_bytes());
        Self(b)
    }

    /// From a `Duration` since the UNIX epoch.
    pub fn from_unix_duration(d: std::time::Duration) -> Self {
        Self::from_unix(d.as_secs(), d.subsec_nanos())
    }

    /// The wire bytes.
    pub const fn to_bytes(self) -> [u8; 12] {
        self.0
    }
}
