//! The key schedule, the DH groups, the PSK AUTH and the SK payload against vectors made by an
//! independent implementation (Python `cryptography`, see `vectors/gen_ike_kat.py`).
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use tandem_ike::NotifyType;
use tandem_ike::keys::{self, DhGroup, KeyShare, Prf, Psk};
use tandem_ike::wire::{
    self, Delete, ExchangeType, FLAG_INITIATOR, Header, Notify, Payload, ProtocolId,
};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn h(v: &Value, k: &str) -> Vec<u8> {
    hex(v[k].as_str().unwrap_or_else(|| panic!("missing {k}")))
}

fn prf_of(name: &str) -> Prf {
    match name {
        "sha256" => Prf::HmacSha256,
        "sha384" => Prf::HmacSha384,
        "sha512" => Prf::HmacSha512,
        other => panic!("unknown prf {other}"),
    }
}

fn sa_bytes(k: &tandem_crypto::SaKeys) -> Vec<u8> {
    let mut v = k.key.to_vec();
    v.extend_from_slice(&k.salt);
    v
}

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/ike_kat.json")).unwrap()
}

#[test]
fn prf_plus_matches_the_independent_implementation() {
    let json = vectors();
    let cases = json["prf_plus"].as_array().unwrap();
    assert_eq!(cases.len(), 18);
    for c in cases {
        let prf = prf_of(c["prf"].as_str().unwrap());
        let len = c["len"].as_u64().unwrap() as usize;
        let out = prf.prf_plus(&h(c, "key"), &h(c, "seed"), len).unwrap();
        assert_eq!(&out[..], &h(c, "out")[..], "{c}");
    }
}

#[test]
fn prf_plus_refuses_more_than_255_blocks() {
    assert!(Prf::HmacSha256.prf_plus(b"k", b"s", 255 * 32).is_some());
    assert!(Prf::HmacSha256.prf_plus(b"k", b"s", 255 * 32 + 1).is_none());
}

#[test]
fn dh_ike_keys_child_keys_and_auth_match_the_independent_implementation() {
    let json = vectors();
    let cases = json["cases"].as_array().unwrap();
    let mut groups = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let prf = prf_of(c["prf"].as_str().unwrap());
        let group = DhGroup::from_id(c["group"].as_u64().unwrap() as u16).unwrap();
        groups.push(group);

        // DH: public values and g^ir both ways.
        let i = KeyShare::from_private_bytes(group, &h(c, "priv_i")).unwrap();
        let r = KeyShare::from_private_bytes(group, &h(c, "priv_r")).unwrap();
        assert_eq!(i.public(), &h(c, "pub_i")[..], "{name}: pub_i");
        assert_eq!(r.public(), &h(c, "pub_r")[..], "{name}: pub_r");
        let g_ir = i.agree(r.public()).unwrap();
        assert_eq!(g_ir.as_bytes(), &h(c, "g_ir")[..], "{name}: g^ir");
        assert_eq!(
            r.agree(i.public()).unwrap().as_bytes(),
            g_ir.as_bytes(),
            "{name}: g^ri"
        );

        // IKE SA keys.
        let (ni, nr) = (h(c, "ni"), h(c, "nr"));
        let spi_i = u64::from_str_radix(c["spi_i"].as_str().unwrap(), 16).unwrap();
        let spi_r = u64::from_str_radix(c["spi_r"].as_str().unwrap(), 16).unwrap();
        assert_eq!(
            &keys::skeyseed(prf, &ni, &nr, g_ir.as_bytes())[..],
            &h(c, "skeyseed")[..],
            "{name}: SKEYSEED"
        );
        let k = keys::derive_ike_keys(prf, &ni, &nr, g_ir.as_bytes(), spi_i, spi_r);
        assert_eq!(k.sk_d.as_bytes(), &h(c, "sk_d")[..], "{name}: SK_d");
        assert_eq!(sa_bytes(&k.sk_ei), h(c, "sk_ei"), "{name}: SK_ei");
        assert_eq!(sa_bytes(&k.sk_er), h(c, "sk_er"), "{name}: SK_er");
        assert_eq!(k.sk_pi.as_bytes(), &h(c, "sk_pi")[..], "{name}: SK_pi");
        assert_eq!(k.sk_pr.as_bytes(), &h(c, "sk_pr")[..], "{name}: SK_pr");

        // Child SA KEYMAT without PFS (IKE_AUTH) and with PFS (CREATE_CHILD_SA).
        let (i2r, r2i) = keys::derive_child_keys(prf, &k.sk_d, None, &ni, &nr);
        assert_eq!(sa_bytes(&i2r), h(c, "child_i2r"), "{name}: KEYMAT i->r");
        assert_eq!(sa_bytes(&r2i), h(c, "child_r2i"), "{name}: KEYMAT r->i");
        let pi = KeyShare::from_private_bytes(group, &h(c, "pfs_priv_i")).unwrap();
        let g_new = pi.agree(&h(c, "pfs_pub_r")).unwrap();
        assert_eq!(g_new.as_bytes(), &h(c, "pfs_g_ir")[..], "{name}: PFS g^ir");
        let (i2r, r2i) = keys::derive_child_keys(
            prf,
            &k.sk_d,
            Some(g_new.as_bytes()),
            &h(c, "ni2"),
            &h(c, "nr2"),
        );
        assert_eq!(
            sa_bytes(&i2r),
            h(c, "child_pfs_i2r"),
            "{name}: PFS KEYMAT i->r"
        );
        assert_eq!(
            sa_bytes(&r2i),
            h(c, "child_pfs_r2i"),
            "{name}: PFS KEYMAT r->i"
        );

        // PSK AUTH of both ends.
        let psk = Psk::new(c["psk"].as_str().unwrap().as_bytes());
        let auth_i = keys::psk_auth(prf, &psk, &h(c, "msg1"), &nr, &k.sk_pi, &h(c, "idi_body"));
        assert_eq!(auth_i, h(c, "auth_i"), "{name}: AUTH initiator");
        let auth_r = keys::psk_auth(prf, &psk, &h(c, "msg2"), &ni, &k.sk_pr, &h(c, "idr_body"));
        assert_eq!(auth_r, h(c, "auth_r"), "{name}: AUTH responder");
    }
    for g in [DhGroup::Ecp256, DhGroup::Ecp384, DhGroup::Curve25519] {
        assert!(groups.contains(&g), "no vector for {g:?}");
    }
}

#[test]
fn sk_payload_matches_the_independent_implementation() {
    let json = vectors();
    let v = &json["sk"];
    let keys = tandem_crypto::SaKeys {
        key: h(v, "key").try_into().unwrap(),
        salt: h(v, "salt").try_into().unwrap(),
    };
    let header = Header {
        spi_i: u64::from_str_radix(v["spi_i"].as_str().unwrap(), 16).unwrap(),
        spi_r: u64::from_str_radix(v["spi_r"].as_str().unwrap(), 16).unwrap(),
        exchange: ExchangeType::Informational,
        flags: FLAG_INITIATOR,
        message_id: v["message_id"].as_u64().unwrap() as u32,
    };
    let inner = vec![
        Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, Vec::new())),
        Payload::Delete(Delete {
            protocol: ProtocolId::Esp,
            spis: vec![
                (v["delete_spi"].as_u64().unwrap() as u32)
                    .to_be_bytes()
                    .to_vec(),
            ],
        }),
    ];
    let sealed = wire::seal_message(&header, &inner, &keys, v["iv"].as_u64().unwrap());
    let expected = h(v, "message");
    assert_eq!(sealed, expected);
    // And the other way: parse + open the independent bytes.
    let msg = wire::Message::parse(&expected).unwrap();
    assert_eq!(msg.header, header);
    assert_eq!(wire::open_sk(&expected, &msg, &keys).unwrap(), inner);
}

#[test]
fn invalid_peer_public_values_are_refused() {
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(1);
    for g in [DhGroup::Ecp256, DhGroup::Ecp384, DhGroup::Curve25519] {
        let s = KeyShare::generate(g, &mut rng);
        let short = vec![1u8; g.public_len() - 1];
        assert!(
            matches!(s.agree(&short), Err(keys::DhError::BadLength { .. })),
            "{g:?}"
        );
        let zero = vec![0u8; g.public_len()];
        let err = s.agree(&zero).unwrap_err();
        match g {
            DhGroup::Curve25519 => assert_eq!(err, keys::DhError::LowOrderPoint),
            _ => assert_eq!(err, keys::DhError::InvalidPoint),
        }
        // A point off the curve: flip a bit of y in a valid public value.
        if g != DhGroup::Curve25519 {
            let mut bad = s.public().to_vec();
            *bad.last_mut().unwrap() ^= 1;
            assert_eq!(
                s.agree(&bad).unwrap_err(),
                keys::DhError::InvalidPoint,
                "{g:?}"
            );
        }
    }
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let psk = Psk::new(b"super-secret-psk".to_vec());
    let dbg = format!("{psk:?}");
    assert!(!dbg.contains("super"), "{dbg}");
    let k = keys::derive_ike_keys(Prf::HmacSha256, &[1; 32], &[2; 32], &[3; 32], 1, 2);
    let dbg = format!("{k:?}");
    let sk_d_hex: String = k
        .sk_d
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!dbg.contains(&sk_d_hex[..8]), "{dbg}");
    assert!(!dbg.contains(&format!("{:?}", k.sk_ei.key)), "{dbg}");
}
