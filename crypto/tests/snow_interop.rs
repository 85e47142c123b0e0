//! Interop with an implementation we did not write: the `snow` crate speaks
//! `Noise_IKpsk2_25519_AESGCM_SHA256` against our initiator and our responder; both sides derive
//! the same handshake hash and split keys, and each opens the other's transport messages.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use tandem_crypto::esp::{HEADROOM, NEXT_HEADER_IPV6, TAILROOM};
use tandem_crypto::handshake::{MAX_MESSAGE_LEN, NoiseSplit, derive_sa_keys};
use tandem_crypto::{InboundSa, Initiator, OutboundSa, Responder, ResponderOutcome};

const PARAMS: &str = "Noise_IKpsk2_25519_AESGCM_SHA256";

/// The tunnel-bound prologue, computed here independently of the crate under test:
/// `"tandem v2" || HMAC-SHA256(key = PSK, "tandem v2 tunnel binding")` (docs/protocol.md).
fn tunnel_prologue(psk: &[u8; 32]) -> Vec<u8> {
    use hmac::{Hmac, KeyInit, Mac};
    let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(psk).unwrap();
    m.update(b"tandem v2 tunnel binding");
    let mut p = b"tandem v2".to_vec();
    p.extend_from_slice(&m.finalize().into_bytes());
    p
}

fn noise_nonce(n: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    b
}

/// Our split key encrypts what snow decrypts, and the reverse, with the oracle as our cipher.
fn transport_roundtrips(snow: &mut snow::TransportState, our_send: &[u8; 32], our_recv: &[u8; 32]) {
    for (n, text) in [&b"first"[..], b"", &[0x5a; 1400][..]].iter().enumerate() {
        let mut wire = vec![0u8; text.len() + 16];
        let len = snow.write_message(text, &mut wire).unwrap();
        let opened = oracle_open(our_recv, &noise_nonce(n as u64), &[], &wire[..len]).unwrap();
        assert_eq!(&opened[..], *text);

        let ours = oracle_seal(our_send, &noise_nonce(n as u64), &[], text);
        let mut plain = vec![0u8; ours.len()];
        let len = snow.read_message(&ours, &mut plain).unwrap();
        assert_eq!(&plain[..len], *text);
    }
}

/// SAs built from snow's split open what ours seal.
fn esp_from_split_interoperates(ours: &mut OutboundSa, split: NoiseSplit, initiator_side: bool) {
    let (i2r, r2i) = derive_sa_keys(&split);
    let keys = if initiator_side { i2r } else { r2i };
    let mut theirs = InboundSa::new(ours.spi(), keys);
    let mut buf = vec![0u8; HEADROOM + 300 + TAILROOM];
    buf[HEADROOM..HEADROOM + 300].fill(0x42);
    let sealed = ours
        .seal(&mut buf, HEADROOM..HEADROOM + 300, NEXT_HEADER_IPV6)
        .unwrap();
    let opened = theirs.open(&mut buf, sealed.datagram).unwrap();
    assert!(buf[opened.payload].iter().all(|&b| b == 0x42));
}

#[test]
fn our_initiator_completes_a_handshake_with_the_snow_responder() {
    let p = keys(1);
    let mut r = rng(2);
    let mut msg = [0u8; MAX_MESSAGE_LEN];
    let (mut init, n) = Initiator::start(
        &p.a,
        &p.b.public_key(),
        &p.psk,
        spi(0x1234_5678),
        ts(9),
        None,
        &mut r,
        &mut msg,
    )
    .unwrap();

    let b_secret = p.b.to_bytes();
    let mut snow_resp = snow::Builder::new(PARAMS.parse().unwrap())
        .local_private_key(&b_secret[..])
        .unwrap()
        .psk(2, p.psk.as_bytes())
        .unwrap()
        .prologue(&tunnel_prologue(p.psk.as_bytes()))
        .unwrap()
        .build_responder()
        .unwrap();
    // Noise message = everything between the 8-byte header and mac1 || mac2.
    let mut payload = [0u8; 64];
    let len = snow_resp
        .read_message(&msg[8..n - 32], &mut payload)
        .unwrap();
    assert_eq!(len, 16);
    assert_eq!(&payload[..4], &0x1234_5678u32.to_be_bytes());
    assert_eq!(&payload[4..16], &ts(9).to_bytes());
    assert_eq!(
        snow_resp.get_remote_static().unwrap(),
        p.a.public_key().as_bytes()
    );

    let mut noise = [0u8; 128];
    let len = snow_resp
        .write_message(&0x0000_0400u32.to_be_bytes(), &mut noise)
        .unwrap();
    let response = frame(2, &noise[..len], &p.a.public_key());
    let mut est = init.consume_response(&response).unwrap();

    assert_eq!(&est.handshake_hash[..], snow_resp.get_handshake_hash());
    let (k1, k2) = snow_resp.dangerously_get_raw_split();
    assert_eq!(est.split.initiator_to_responder, k1);
    assert_eq!(est.split.responder_to_initiator, k2);
    assert_eq!(est.remote_spi.get(), 0x400);

    let mut transport = snow_resp.into_transport_mode().unwrap();
    let split = est.split.clone();
    transport_roundtrips(
        &mut transport,
        &split.initiator_to_responder,
        &split.responder_to_initiator,
    );
    esp_from_split_interoperates(
        &mut est.outbound,
        NoiseSplit {
            initiator_to_responder: k1,
            responder_to_initiator: k2,
        },
        true,
    );
}

#[test]
fn the_snow_initiator_completes_a_handshake_with_our_responder() {
    let p = keys(3);
    let mut r = rng(4);
    let a_secret = p.a.to_bytes();
    let mut snow_init = snow::Builder::new(PARAMS.parse().unwrap())
        .local_private_key(&a_secret[..])
        .unwrap()
        .remote_public_key(p.b.public_key().as_bytes())
        .unwrap()
        .psk(2, p.psk.as_bytes())
        .unwrap()
        .prologue(&tunnel_prologue(p.psk.as_bytes()))
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut payload = Vec::new();
    payload.extend_from_slice(&0x0000_0777u32.to_be_bytes());
    payload.extend_from_slice(&ts(5).to_bytes());
    let mut noise = [0u8; 256];
    let len = snow_init.write_message(&payload, &mut noise).unwrap();
    let initiation = frame(1, &noise[..len], &p.b.public_key());

    let mut resp = Responder::new(&p.b, p.a.public_key(), &p.psk).unwrap();
    let mut out = [0u8; MAX_MESSAGE_LEN];
    let outcome = resp
        .handle_initiation(
            &initiation,
            addr(),
            false,
            spi(0x999),
            t0(),
            &mut r,
            &mut out,
        )
        .unwrap();
    let ResponderOutcome::Established {
        established,
        response_len,
    } = outcome
    else {
        panic!("expected established")
    };
    let mut est = *established;
    assert_eq!(est.remote_spi.get(), 0x777);
    assert_eq!(est.timestamp, ts(5));
    // The response's mac1 is keyed by the initiator's public key.
    assert_eq!(
        &out[response_len - 32..response_len - 16],
        &mac1(&p.a.public_key(), &out[..response_len - 32])
    );

    let mut reply = [0u8; 64];
    let len = snow_init
        .read_message(&out[8..response_len - 32], &mut reply)
        .unwrap();
    assert_eq!(&reply[..len], &0x999u32.to_be_bytes());
    assert_eq!(&est.handshake_hash[..], snow_init.get_handshake_hash());
    let (k1, k2) = snow_init.dangerously_get_raw_split();
    assert_eq!(est.split.initiator_to_responder, k1);
    assert_eq!(est.split.responder_to_initiator, k2);

    let mut transport = snow_init.into_transport_mode().unwrap();
    let split = est.split.clone();
    transport_roundtrips(
        &mut transport,
        &split.responder_to_initiator,
        &split.initiator_to_responder,
    );
    esp_from_split_interoperates(
        &mut est.outbound,
        NoiseSplit {
            initiator_to_responder: k1,
            responder_to_initiator: k2,
        },
        false,
    );
}
