//! `genkey`, `pubkey`, `genpsk`: key material from the OS CSPRNG, base64 like `wg genkey`.
//!
//! Output is standard base64 with padding: 44 characters for 32 bytes. A private key is clamped
//! as X25519 (RFC 7748 §5) before it is printed, as `wg genkey` does, so that the printed bytes are
//! exactly the scalar used. Every buffer holding a secret is zeroized on drop.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Why key material could not be produced or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    /// The input was not a base64 private key.
    #[error("invalid private key on standard input: {0}")]
    BadInput(String),
}

/// 32 bytes from the OS CSPRNG (`getrandom(2)`).
fn random32() -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut b = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut b[..]).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

/// Clamps an X25519 scalar (RFC 7748 §5).
fn clamp(k: &mut [u8; 32]) {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
}

fn encode(bytes: &[u8; 32]) -> Zeroizing<String> {
    Zeroizing::new(STANDARD.encode(bytes))
}

/// A new X25519 private key, base64 (44 characters, no newline).
pub fn genkey() -> Result<Zeroizing<String>, KeyError> {
    let mut k = random32()?;
    clamp(&mut k);
    Ok(encode(&k))
}

/// A new 32-byte pre-shared key, base64 (44 characters, no newline).
pub fn genpsk() -> Result<Zeroizing<String>, KeyError> {
    Ok(encode(&*random32()?))
}

/// The public key of a base64 private key (surrounding whitespace ignored), base64.
pub fn pubkey(private_base64: &str) -> Result<String, KeyError> {
    let k = tandem_config::parse_key_base64(private_base64).map_err(KeyError::BadInput)?;
    let public = x25519_dalek::x25519(*k, x25519_dalek::X25519_BASEPOINT_BYTES);
    Ok(STANDARD.encode(public))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_keys_are_44_characters_and_differ() {
        let a = genkey().unwrap();
        let b = genkey().unwrap();
        let p = genpsk().unwrap();
        assert_eq!(a.len(), 44);
        assert_eq!(p.len(), 44);
        assert_ne!(*a, *b);
        let raw = tandem_config::parse_key_base64(&a).unwrap();
        assert_eq!(raw[0] & 7, 0, "clamped low bits");
        assert_eq!(raw[31] & 0xc0, 0x40, "clamped high bits");
    }

    #[test]
    fn pubkey_matches_the_rfc7748_test_vector() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let alice_private = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let alice_public = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        let got = pubkey(&format!("{}\n", STANDARD.encode(alice_private))).unwrap();
        assert_eq!(got, STANDARD.encode(alice_public));
    }

    #[test]
    fn pubkey_refuses_input_that_is_not_a_key() {
        assert!(pubkey("hello").is_err());
        assert!(pubkey("").is_err());
        assert!(pubkey(&STANDARD.encode([1u8; 31])).is_err());
    }
}
