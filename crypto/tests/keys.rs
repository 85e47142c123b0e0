//! Keys and identifiers: RFC 7748 public-key derivation, SPI range, TAI64N encoding and order.
#![allow(clippy::unwrap_used)]

use tandem_crypto::{Psk, PublicKey, Spi, StaticSecret, Tai64N};

fn hex32(s: &str) -> [u8; 32] {
    let v: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

#[test]
fn public_keys_match_rfc_7748_section_6_1() {
    let alice = StaticSecret::from_bytes(hex32(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    ));
    assert_eq!(
        alice.public_key(),
        PublicKey(hex32(
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        ))
    );
    let bob = StaticSecret::from_bytes(hex32(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    ));
    assert_eq!(
        bob.public_key(),
        PublicKey(hex32(
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        ))
    );
    assert_eq!(
        *bob.to_bytes(),
        hex32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    );
    assert!(alice.public_key().ct_eq(&alice.public_key()));
    assert!(!alice.public_key().ct_eq(&bob.public_key()));
}

#[test]
fn spis_below_256_do_not_exist() {
    assert!(Spi::new(0).is_none());
    assert!(Spi::new(1).is_none());
    assert!(Spi::new(255).is_none());
    assert_eq!(Spi::new(256).unwrap().get(), 256);
    assert_eq!(Spi::new(u32::MAX).unwrap().get(), u32::MAX);
    assert_eq!(Spi::new(0xabc).unwrap().to_string(), "0x00000abc");
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed([1; 32]);
    for _ in 0..1000 {
        assert!(Spi::random(&mut rng).get() >= 256);
    }
}

#[test]
fn tai64n_is_big_endian_2_62_plus_seconds_then_nanoseconds_and_orders_by_time() {
    let t = Tai64N::from_unix(1, 2);
    assert_eq!(t.to_bytes(), [0x40, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
    let a = Tai64N::from_unix(1_700_000_000, 999_999_999);
    let b = Tai64N::from_unix(1_700_000_001, 0);
    assert!(a < b);
    assert!(Tai64N::from_unix(5, 1) > Tai64N::from_unix(5, 0));
    assert_eq!(
        Tai64N::from_unix_duration(std::time::Duration::new(7, 8)),
        Tai64N::from_unix(7, 8)
    );
}

#[test]
fn secret_types_print_fingerprints_not_bytes() {
    let psk = Psk::from_bytes([0x11; 32]);
    let s = format!("{psk:?}");
    assert!(
        s.starts_with("Psk(") && s.len() == "Psk(01234567)".len(),
        "{s}"
    );
    let k = StaticSecret::from_bytes([0x22; 32]);
    let s = format!("{k:?}");
    assert!(
        s.starts_with("StaticSecret(public ") && !s.contains("22"),
        "{s}"
    );
}
