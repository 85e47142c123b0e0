//! ESP seal/open: known-answer vectors from Python `cryptography` (a third implementation),
//! a cross-check against the `aes-gcm` crate both ways, and the SA's counters and limits.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use tandem_crypto::esp::{
    HEADROOM, ICV_LEN, NEXT_HEADER_DUMMY, NEXT_HEADER_IPV4, NEXT_HEADER_LIVENESS,
    REJECT_AFTER_PACKETS, REKEY_AFTER_PACKETS, TAILROOM,
};
use tandem_crypto::{InboundSa, OutboundSa, SaKeys, SealError, peek_spi};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn sa_keys(key: &[u8], salt: &[u8]) -> SaKeys {
    SaKeys {
        key: key.try_into().unwrap(),
        salt: salt.try_into().unwrap(),
    }
}

fn nonce(salt: &[u8; 4], seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn aad(spi: u32, seq: u64) -> Vec<u8> {
    let mut a = spi.to_be_bytes().to_vec();
    a.extend_from_slice(&((seq >> 32) as u32).to_be_bytes());
    a.extend_from_slice(&(seq as u32).to_be_bytes());
    a
}

#[test]
fn seal_and_open_match_the_python_cryptography_known_answer_vectors() {
    let text = include_str!("vectors/esp_kat.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    let vectors = json["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 11);
    let mut pads_seen = [false; 4];
    for v in vectors {
        let key = hex(v["key"].as_str().unwrap());
        let salt = hex(v["salt"].as_str().unwrap());
        let spi_v = v["spi"].as_u64().unwrap() as u32;
        let seq = v["seq"].as_u64().unwrap();
        let nh = v["next_header"].as_u64().unwrap() as u8;
        let payload = hex(v["payload"].as_str().unwrap());
        let datagram = hex(v["datagram"].as_str().unwrap());
        pads_seen[v["pad_len"].as_u64().unwrap() as usize] = true;

        // seal: our bytes equal theirs.
        let mut out = OutboundSa::new(spi(spi_v), sa_keys(&key, &salt));
        out.set_next_seq_for_testing(seq);
        let mut buf = vec![0u8; HEADROOM + payload.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(&payload);
        let sealed = out
            .seal(&mut buf, HEADROOM..HEADROOM + payload.len(), nh)
            .unwrap();
        assert_eq!(sealed.seq, seq);
        assert_eq!(
            &buf[sealed.datagram.clone()],
            &datagram[..],
            "{}",
            v["name"]
        );

        // open: their bytes give the payload back.
        let mut inb = InboundSa::new(spi(spi_v), sa_keys(&key, &salt));
        let mut buf = datagram.clone();
        buf.extend_from_slice(&[0xee; 7]); // trailing bytes outside the range stay untouched
        let opened = inb.open(&mut buf, 0..datagram.len()).unwrap();
        assert_eq!(&buf[opened.payload.clone()], &payload[..]);
        assert_eq!(opened.next_header, nh);
        assert_eq!(opened.seq, seq);
        assert_eq!(&buf[datagram.len()..], &[0xee; 7]);
    }
    assert_eq!(pads_seen, [true; 4], "every padding length is covered");
}

#[test]
fn sealed_packets_decrypt_with_the_aes_gcm_crate_and_its_packets_open_with_ours() {
    let key = [0x11u8; 32];
    let salt = [1, 2, 3, 4];
    let spi_v = 0x0102_0304;
    let mut out = OutboundSa::new(spi(spi_v), sa_keys(&key, &salt));
    let mut inb = InboundSa::new(spi(spi_v), sa_keys(&key, &salt));
    let sizes: Vec<usize> = (0..=70)
        .chain([511, 512, 1419, 1420, 1421, 8191, 8192])
        .collect();
    for (i, &len) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();

        // ours -> oracle
        let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
        buf[HEADROOM..HEADROOM + len].copy_from_slice(&payload);
        let sealed = out
            .seal(&mut buf, HEADROOM..HEADROOM + len, NEXT_HEADER_IPV4)
            .unwrap();
        let d = &buf[sealed.datagram.clone()];
        assert_eq!(peek_spi(d), Some(spi_v));
        assert_eq!(
            (d.len() - HEADROOM - ICV_LEN) % 4,
            0,
            "ciphertext is 4-byte aligned"
        );
        let plain = oracle_open(
            &key,
            &nonce(&salt, sealed.seq),
            &aad(spi_v, sealed.seq),
            &d[16..],
        )
        .unwrap();
        assert_eq!(&plain[..len], &payload[..]);
        let pad = plain[plain.len() - 2] as usize;
        assert_eq!(plain.len(), len + pad + 2);
        assert_eq!(plain[plain.len() - 1], NEXT_HEADER_IPV4);

        // oracle -> ours (the peer's sequence numbers run independently)
        let seq = 2 * i as u64 + 1;
        let mut pt = payload.clone();
        let pad = (4 - (len + 2) % 4) % 4;
        pt.extend((1..=pad as u8).chain([pad as u8, NEXT_HEADER_LIVENESS]));
        let mut wire = spi_v.to_be_bytes().to_vec();
        wire.extend_from_slice(&(seq as u32).to_be_bytes());
        wire.extend_from_slice(&seq.to_be_bytes());
        wire.extend(oracle_seal(&key, &nonce(&salt, seq), &aad(spi_v, seq), &pt));
        let wire_len = wire.len();
        let opened = inb.open(&mut wire, 0..wire_len).unwrap();
        assert_eq!(&wire[opened.payload], &payload[..]);
        assert_eq!(opened.next_header, NEXT_HEADER_LIVENESS);
        assert_eq!(opened.seq, seq);
    }
}

#[test]
fn seal_writes_only_around_the_payload_and_needs_headroom_and_tailroom() {
    let (mut a, mut b) = handshake(5);
    let mut buf = vec![0xaau8; 4 + HEADROOM + 10 + TAILROOM + 4];
    let payload = 4 + HEADROOM..4 + HEADROOM + 10;
    let sealed = a
        .outbound
        .seal(&mut buf, payload.clone(), NEXT_HEADER_DUMMY)
        .unwrap();
    assert_eq!(sealed.datagram.start, 4);
    assert_eq!(sealed.datagram.end, payload.end + 2 + ICV_LEN);
    assert_eq!(&buf[..4], &[0xaa; 4]);
    assert!(buf[sealed.datagram.end..].iter().all(|&x| x == 0xaa));
    let opened = b.inbound.open(&mut buf, sealed.datagram).unwrap();
    assert_eq!(opened.payload, payload);
    assert_eq!(opened.next_header, NEXT_HEADER_DUMMY);

    let mut small = vec![0u8; HEADROOM + 10 + TAILROOM];
    assert_eq!(
        a.outbound.seal(&mut small, HEADROOM - 1..HEADROOM + 9, 4),
        Err(SealError::NoHeadroom)
    );
    // 11 bytes need 3 bytes of padding: the full TAILROOM, one byte more than `tight` has.
    let mut tight = vec![0u8; HEADROOM + 11 + TAILROOM - 1];
    assert_eq!(
        a.outbound.seal(&mut tight, HEADROOM..HEADROOM + 11, 4),
        Err(SealError::NoTailroom)
    );
    let mut exact = vec![0u8; HEADROOM + 11 + TAILROOM];
    let s = a
        .outbound
        .seal(&mut exact, HEADROOM..HEADROOM + 11, 4)
        .unwrap();
    assert_eq!(s.datagram, 0..exact.len());
    assert_eq!(
        a.outbound.seal(&mut small, HEADROOM..HEADROOM + 100, 4),
        Err(SealError::OutOfBounds)
    );
    // Refusals consume no sequence number.
    assert_eq!(a.outbound.next_seq(), 3);
}

#[test]
fn seal_signals_rekey_past_the_soft_limit_and_refuses_past_the_hard_limit() {
    let (mut a, mut b) = handshake(6);
    let mut buf = vec![0u8; HEADROOM + 20 + TAILROOM];
    let p = HEADROOM..HEADROOM + 20;

    a.outbound.set_next_seq_for_testing(REKEY_AFTER_PACKETS - 1);
    assert!(!a.outbound.seal(&mut buf, p.clone(), 4).unwrap().rekey_due);
    let s = a.outbound.seal(&mut buf, p.clone(), 4).unwrap();
    assert_eq!(s.seq, REKEY_AFTER_PACKETS);
    assert!(s.rekey_due, "after 2^27 packets the SA asks for a rekey");
    assert!(b.inbound.open(&mut buf, s.datagram).is_ok());

    a.outbound.set_next_seq_for_testing(REJECT_AFTER_PACKETS);
    let s = a.outbound.seal(&mut buf, p.clone(), 4).unwrap();
    assert_eq!(s.seq, REJECT_AFTER_PACKETS);
    assert!(a.outbound.exhausted());
    assert_eq!(
        a.outbound.seal(&mut buf, p.clone(), 4),
        Err(SealError::Exhausted)
    );
    assert_eq!(a.outbound.seal(&mut buf, p, 4), Err(SealError::Exhausted));
}

#[test]
fn sequence_numbers_are_unique_and_increase_by_one() {
    let (mut a, _) = handshake(7);
    let mut buf = vec![0u8; HEADROOM + TAILROOM + 1];
    for want in 1..=1000u64 {
        assert_eq!(a.outbound.next_seq(), want);
        let s = a
            .outbound
            .seal(&mut buf, HEADROOM..HEADROOM + 1, 4)
            .unwrap();
        assert_eq!(s.seq, want);
    }
}

#[test]
fn keylog_line_has_key_then_salt_in_hex() {
    let k = sa_keys(&[0xab; 32], &[0, 1, 2, 0xff]);
    assert_eq!(k.keylog_hex(), format!("{}000102ff", "ab".repeat(32)));
    assert_eq!(format!("{k:?}"), "SaKeys(..)");
}
