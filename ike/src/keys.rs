//! The IKEv2 key schedule and the Diffie-Hellman groups.
//!
//! ```text
//! SKEYSEED = prf(Ni | Nr, g^ir)                                         RFC 7296 §2.14
//! {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
//!          = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
//! KEYMAT   = prf+(SK_d, [g^ir (new) |] Ni | Nr)                          RFC 7296 §2.17
//! AUTH     = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>)          RFC 7296 §2.15
//! SignedOctets = RealMessage | Nonce of the peer | prf(SK_p, RestOfIDPayload)
//! ```
//!
//! With AES-GCM (an AEAD) there are no integrity keys: SK_ai and SK_ar are empty and each of
//! SK_ei/SK_er, and each direction of KEYMAT, is a 32-byte AES-256 key followed by a 4-byte salt
//! (RFC 5282 §7.1, RFC 4106 §8.1). KEYMAT is taken initiator-to-responder first (§2.17).
//!
//! DH (RFC 5903 §7, RFC 8031 §2): the KE data of an ECP group is x || y, each the field size,
//! and the shared secret g^ir is the x coordinate alone; Curve25519 uses the 32-byte
//! u-coordinate both ways and an all-zero result is refused.
//!
//! Secrets live in zeroize-on-drop types whose `Debug` prints no bytes.

use std::fmt;

use rand_core::CryptoRng;
use ring::hmac;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tandem_crypto::SaKeys;
use tandem_crypto::esp::{AES_KEY_LEN, SALT_LEN};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The key pad of the PSK AUTH computation (RFC 7296 §2.15).
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";
/// AUTH method 2: shared key message integrity code (RFC 7296 §3.8).
pub const AUTH_METHOD_PSK: u8 = 2;
/// Bytes of keying material per direction for AES-256-GCM: key and salt.
pub const AEAD_KEYMAT_LEN: usize = AES_KEY_LEN + SALT_LEN;

/// A short, non-secret fingerprint of `bytes` for `Debug`: 4 bytes of SHA-256(label || bytes).
fn fingerprint(label: &[u8], bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(label);
    h.update(bytes);
    let d: [u8; 32] = h.finalize().into();
    format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// The pseudorandom functions (transform type 2, RFC 7296 §3.3.2 / RFC 4868).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256 (5).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (6).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (7).
    HmacSha512,
}

impl Prf {
    /// The transform ID.
    pub fn id(self) -> u16 {
        match self {
            Self::HmacSha256 => 5,
            Self::HmacSha384 => 6,
            Self::HmacSha512 => 7,
        }
    }

    /// From a transform ID.
    pub fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            5 => Self::HmacSha256,
            6 => Self::HmacSha384,
            7 => Self::HmacSha512,
            _ => return None,
        })
    }

    /// Output length, which is also the length of SK_d, SK_pi and SK_pr (RFC 7296 §2.14).
    pub fn output_len(self) -> usize {
        match self {
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }

    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha256 => hmac::HMAC_SHA256,
            Self::HmacSha384 => hmac::HMAC_SHA384,
            Self::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// `prf(key, data[0] | data[1] | ...)`.
    pub fn prf(self, key: &[u8], data: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let key = hmac::Key::new(self.algorithm(), key);
        let mut ctx = hmac::Context::with_key(&key);
        for d in data {
            ctx.update(d);
        }
        Zeroizing::new(ctx.sign().as_ref().to_vec())
    }

    /// prf+(key, seed) truncated to `len` bytes (RFC 7296 §2.13): T1 = prf(K, S | 0x01),
    /// Tn = prf(K, Tn-1 | S | n). `None` if `len` needs more than 255 blocks.
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Option<Zeroizing<Vec<u8>>> {
        if len > 255 * self.output_len() {
            return None;
        }
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.output_len()));
        let mut t = Zeroizing::new(Vec::new());
        let mut n = 1u8;
        while out.len() < len {
            t = self.prf(key, &[&t, seed, &[n]]);
            out.extend_from_slice(&t);
            n = n.wrapping_add(1);
        }
        out.truncate(len);
        Some(out)
    }
}

/// The Diffie-Hellman groups tandem speaks (transform type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 256-bit random ECP group, NIST P-256 (19, RFC 5903).
    Ecp256,
    /// 384-bit random ECP group, NIST P-384 (20, RFC 5903).
    Ecp384,
    /// Curve25519 (31, RFC 8031).
    Curve25519,
}

impl DhGroup {
    /// The transform ID (the group number).
    pub fn id(self) -> u16 {
        match self {
            Self::Ecp256 => 19,
            Self::Ecp384 => 20,
            Self::Curve25519 => 31,
        }
    }

    /// From a group number.
    pub fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            19 => Self::Ecp256,
            20 => Self::Ecp384,
            31 => Self::Curve25519,
            _ => return None,
        })
    }

    /// Length of the KE data.
    pub fn public_len(self) -> usize {
        match self {
            Self::Ecp256 => 64,
            Self::Ecp384 => 96,
            Self::Curve25519 => 32,
        }
    }
}

/// Why a DH computation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    /// The peer's KE data has the wrong length for the group.
    #[error("KE data of {got} bytes, group needs {want}")]
    BadLength {
        /// Bytes received.
        got: usize,
        /// Bytes the group needs.
        want: usize,
    },
    /// The peer's point is not on the curve (RFC 5903 §6 requires this check).
    #[error("peer public value is not a valid point")]
    InvalidPoint,
    /// X25519 gave the all-zero output (RFC 8031 §2.3: a low-order point).
    #[error("X25519 result is all-zero")]
    LowOrderPoint,
    /// The private key bytes are out of range for the group.
    #[error("private key out of range")]
    InvalidPrivateKey,
}

enum Secret {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    X25519(x25519_dalek::StaticSecret),
}

/// Our DH private value for one exchange and its public KE data. The private part zeroizes on
/// drop (inside the curve crates); `Debug` shows the group and a fingerprint of the public value.
pub struct KeyShare {
    secret: Secret,
    public: Vec<u8>,
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyShare({:?}, public {})",
            self.group(),
            fingerprint(b"ike ke", &self.public)
        )
    }
}

impl KeyShare {
    /// A fresh private value from `rng`. For the ECP groups the scalar is drawn by rejection:
    /// 32/48 random bytes until they encode a value in 1..n-1 (FIPS 186-4 B.4.2).
    pub fn generate<R: CryptoRng + ?Sized>(group: DhGroup, rng: &mut R) -> Self {
        let len = match group {
            DhGroup::Ecp256 | DhGroup::Curve25519 => 32,
            DhGroup::Ecp384 => 48,
        };
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        loop {
            rng.fill_bytes(&mut bytes);
            if let Ok(share) = Self::from_private_bytes(group, &bytes) {
                return share;
            }
        }
    }

    /// From raw private-key bytes (big-endian scalar for ECP, the X25519 scalar for group 31):
    /// for the known-answer tests and for [`KeyShare::generate`].
    pub fn from_private_bytes(group: DhGroup, bytes: &[u8]) -> Result<Self, DhError> {
        let (secret, public) = match group {
            DhGroup::Ecp256 => {
                let sk =
                    p256::SecretKey::from_slice(bytes).map_err(|_| DhError::InvalidPrivateKey)?;
                let pk =
                    p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&sk.public_key(), false);
                let public = pk.as_bytes().get(1..).unwrap_or_default().to_vec();
                (Secret::P256(sk), public)
            }
            DhGroup::Ecp384 => {
                let sk =
                    p384::SecretKey::from_slice(bytes).map_err(|_| DhError::InvalidPrivateKey)?;
                let pk =
                    p384::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&sk.public_key(), false);
                let public = pk.as_bytes().get(1..).unwrap_or_default().to_vec();
                (Secret::P384(sk), public)
            }
            DhGroup::Curve25519 => {
                let b: [u8; 32] = bytes.try_into().map_err(|_| DhError::InvalidPrivateKey)?;
                let b = Zeroizing::new(b);
                let sk = x25519_dalek::StaticSecret::from(*b);
                let public = x25519_dalek::PublicKey::from(&sk).to_bytes().to_vec();
                (Secret::X25519(sk), public)
            }
        };
        if public.len() != group.public_len() {
            return Err(DhError::InvalidPrivateKey);
        }
        Ok(Self { secret, public })
    }

    /// The group.
    pub fn group(&self) -> DhGroup {
        match self.secret {
            Secret::P256(_) => DhGroup::Ecp256,
            Secret::P384(_) => DhGroup::Ecp384,
            Secret::X25519(_) => DhGroup::Curve25519,
        }
    }

    /// The KE payload data.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// g^ir with the peer's KE data.
    pub fn agree(&self, peer: &[u8]) -> Result<SharedSecret, DhError> {
        let want = self.group().public_len();
        if peer.len() != want {
            return Err(DhError::BadLength {
                got: peer.len(),
                want,
            });
        }
        let mut sec1 = Vec::with_capacity(1 + peer.len());
        sec1.push(0x04); // uncompressed point (SEC 1 §2.3.3)
        sec1.extend_from_slice(peer);
        let shared = match &self.secret {
            Secret::P256(sk) => {
                let pk =
                    p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| DhError::InvalidPoint)?;
                let s = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                s.raw_secret_bytes().to_vec()
            }
            Secret::P384(sk) => {
                let pk =
                    p384::PublicKey::from_sec1_bytes(&sec1).map_err(|_| DhError::InvalidPoint)?;
                let s = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                s.raw_secret_bytes().to_vec()
            }
            Secret::X25519(sk) => {
                let mut b = [0u8; 32];
                b.copy_from_slice(peer);
                let s = sk.diffie_hellman(&x25519_dalek::PublicKey::from(b));
                let out = s.to_bytes().to_vec();
                if bool::from(out.ct_eq(&[0u8; 32][..])) {
                    return Err(DhError::LowOrderPoint);
                }
                out
            }
        };
        Ok(SharedSecret(Zeroizing::new(shared)))
    }
}

/// A DH shared secret g^ir; zeroized on drop, never printed.
pub struct SharedSecret(Zeroizing<Vec<u8>>);

impl SharedSecret {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// A pre-shared key as the operator gives it (any length; AWS: 8..64 ASCII characters).
/// Zeroized on drop; `Debug` prints a fingerprint.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Psk(Vec<u8>);

impl Psk {
    /// From the raw bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk({})", fingerprint(b"tandem ike psk", &self.0))
    }
}

/// A prf-sized secret key (SK_d, SK_pi, SK_pr); zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrfKey(Vec<u8>);

impl PrfKey {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PrfKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrfKey(..)")
    }
}

/// The keys of an IKE SA (RFC 7296 §2.14) for AES-256-GCM: no SK_ai/SK_ar.
#[derive(Debug, Clone)]
pub struct IkeKeys {
    /// The negotiated PRF.
    pub prf: Prf,
    /// SK_d: Child SA keying material comes from it.
    pub sk_d: PrfKey,
    /// SK_ei: encrypts initiator -> responder.
    pub sk_ei: SaKeys,
    /// SK_er: encrypts responder -> initiator.
    pub sk_er: SaKeys,
    /// SK_pi: the initiator's AUTH.
    pub sk_pi: PrfKey,
    /// SK_pr: the responder's AUTH.
    pub sk_pr: PrfKey,
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14).
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(Vec::with_capacity(ni.len() + nr.len()));
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    prf.prf(&key, &[g_ir])
}

fn sa_keys(bytes: &[u8]) -> SaKeys {
    let mut k = SaKeys {
        key: [0; AES_KEY_LEN],
        salt: [0; SALT_LEN],
    };
    k.key.copy_from_slice(&bytes[..AES_KEY_LEN]);
    k.salt.copy_from_slice(&bytes[AES_KEY_LEN..AEAD_KEYMAT_LEN]);
    k
}

/// The IKE SA keys from a fresh IKE_SA_INIT (RFC 7296 §2.14).
pub fn derive_ike_keys(
    prf: Prf,
    ni: &[u8],
    nr: &[u8],
    g_ir: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> IkeKeys {
    let seed_key = skeyseed(prf, ni, nr, g_ir);
    keys_from_skeyseed(prf, &seed_key, ni, nr, spi_i, spi_r)
}

/// The keys of the IKE SA that replaces one in a CREATE_CHILD_SA rekey (RFC 7296 §2.18):
/// `SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)` with the old SA's PRF, then prf+ of the
/// new PRF over `Ni | Nr | SPIi | SPIr` with the new SPIs, as for a fresh SA.
pub fn derive_rekeyed_ike_keys(
    old: &IkeKeys,
    prf: Prf,
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> IkeKeys {
    let seed_key = old.prf.prf(old.sk_d.as_bytes(), &[g_ir, ni, nr]);
    keys_from_skeyseed(prf, &seed_key, ni, nr, spi_i, spi_r)
}

fn keys_from_skeyseed(
    prf: Prf,
    seed_key: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> IkeKeys {
    let mut seed = Vec::with_capacity(ni.len() + nr.len() + 16);
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    seed.extend_from_slice(&spi_i.to_be_bytes());
    seed.extend_from_slice(&spi_r.to_be_bytes());
    let p = prf.output_len();
    let len = 3 * p + 2 * AEAD_KEYMAT_LEN;
    // 3 * 64 + 72 bytes is far below 255 blocks of any of our PRFs.
    #[allow(clippy::expect_used)]
    let km = prf
        .prf_plus(seed_key, &seed, len)
        .expect("IKE SA keys fit in prf+");
    let e = p + AEAD_KEYMAT_LEN;
    IkeKeys {
        prf,
        sk_d: PrfKey(km[..p].to_vec()),
        sk_ei: sa_keys(&km[p..e]),
        sk_er: sa_keys(&km[e..e + AEAD_KEYMAT_LEN]),
        sk_pi: PrfKey(km[e + AEAD_KEYMAT_LEN..e + AEAD_KEYMAT_LEN + p].to_vec()),
        sk_pr: PrfKey(km[e + AEAD_KEYMAT_LEN + p..].to_vec()),
    }
}

/// Child SA keys for AES-256-GCM ESP (RFC 7296 §2.17): (initiator -> responder,
/// responder -> initiator). `g_ir` is the fresh shared secret of a CREATE_CHILD_SA with PFS;
/// `None` for the first Child SA (IKE_AUTH) and rekeys without PFS.
pub fn derive_child_keys(
    prf: Prf,
    sk_d: &PrfKey,
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
) -> (SaKeys, SaKeys) {
    let mut seed = Zeroizing::new(Vec::new());
    if let Some(g) = g_ir {
        seed.extend_from_slice(g);
    }
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    // 72 bytes is far below 255 blocks of any of our PRFs.
    #[allow(clippy::expect_used)]
    let km = prf
        .prf_plus(sk_d.as_bytes(), &seed, 2 * AEAD_KEYMAT_LEN)
        .expect("Child SA keys fit in prf+");
    (
        sa_keys(&km[..AEAD_KEYMAT_LEN]),
        sa_keys(&km[AEAD_KEYMAT_LEN..]),
    )
}

/// The PSK AUTH data (RFC 7296 §2.15):
/// `prf(prf(psk, "Key Pad for IKEv2"), real_message | peer_nonce | prf(sk_p, id_body))`.
/// For the initiator: its IKE_SA_INIT request, Nr, SK_pi, its IDi body; for the responder: its
/// IKE_SA_INIT response, Ni, SK_pr, its IDr body.
pub fn psk_auth(
    prf: Prf,
    psk: &Psk,
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &PrfKey,
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf.prf(sk_p.as_bytes(), &[id_body]);
    let pad = prf.prf(psk.as_bytes(), &[KEY_PAD]);
    prf.prf(&pad, &[real_message, peer_nonce, &maced_id])
        .to_vec()
}

/// Constant-time comparison of AUTH values.
pub fn auth_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
