//! ESP seal/open: known-answer vectors from Python `cryptography` (a third implementation),
//! a cross-check against the `aes-gcm` crate both ways, and the SA's counters and limits.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use tandem_crypto::esp::{
    HEADROOM, ICV_LEN, NEXT_HEADER_DUMMY, NEXT_HEADER_IPV4, NEXT_HEADER_LIVENESS,
    REJECT_AFTER_PACKETS, REJECT_AFTER_PACKETS_32, REKEY_AFTER_PACKETS, REKEY_AFTER_PACKETS_32,
    TAILROOM,
};
use tandem_crypto::{
    InboundParams, InboundSa, OpenError, OutboundSa, PeerIv, ReplayError, SaKeys, SealError,
    SeqMode, WindowSize, peek_spi,
};

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

/// RFC 4106 §5 without ESN: SPI || 32-bit sequence number.
fn aad32(spi: u32, seq: u32) -> Vec<u8> {
    let mut a = spi.to_be_bytes().to_vec();
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

/// An inbound SA as an IKEv2 peer without ESN needs it: 32-bit numbers, any IV.
fn ikev2_params(window: u64) -> InboundParams {
    InboundParams {
        seq: SeqMode::Bits32,
        window: WindowSize::new(window).unwrap(),
        peer_iv: PeerIv::Any,
    }
}

/// A 32-bit-sequence datagram built by the oracle: header, the given IV, ciphertext and tag of
/// `payload` padded, AAD = SPI || seq.
fn oracle_datagram_32(
    key: &[u8; 32],
    salt: &[u8; 4],
    spi_v: u32,
    (seq, iv): (u32, u64),
    payload: &[u8],
    next_header: u8,
) -> Vec<u8> {
    let mut pt = payload.to_vec();
    let pad = (4 - (payload.len() + 2) % 4) % 4;
    pt.extend((1..=pad as u8).chain([pad as u8, next_header]));
    let mut wire = spi_v.to_be_bytes().to_vec();
    wire.extend_from_slice(&seq.to_be_bytes());
    wire.extend_from_slice(&iv.to_be_bytes());
    wire.extend(oracle_seal(key, &nonce(salt, iv), &aad32(spi_v, seq), &pt));
    wire
}

#[test]
fn seal_and_open_match_the_python_cryptography_known_answer_vectors() {
    let text = include_str!("vectors/esp_kat.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    let vectors = json["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 20);
    let mut pads_seen = [[false; 4]; 2];
    let mut foreign_ivs = 0;
    for v in vectors {
        let mode = match v["seq_mode"].as_str().unwrap() {
            "esn" => SeqMode::Esn,
            "32" => SeqMode::Bits32,
            other => panic!("unknown seq_mode {other}"),
        };
        let iv_is_seq = v["iv_is_seq"].as_bool().unwrap();
        let key = hex(v["key"].as_str().unwrap());
        let salt = hex(v["salt"].as_str().unwrap());
        let spi_v = v["spi"].as_u64().unwrap() as u32;
        let seq = v["seq"].as_u64().unwrap();
        let nh = v["next_header"].as_u64().unwrap() as u8;
        let payload = hex(v["payload"].as_str().unwrap());
        let datagram = hex(v["datagram"].as_str().unwrap());
        pads_seen[usize::from(mode == SeqMode::Bits32)][v["pad_len"].as_u64().unwrap() as usize] =
            true;
        let params = InboundParams {
            seq: mode,
            peer_iv: if mode == SeqMode::Esn {
                PeerIv::Sequence
            } else {
                PeerIv::Any
            },
            ..InboundParams::default()
        };

        if !iv_is_seq {
            // A standard peer's own IV: ours never sends it, an IKEv2 SA opens it, a tandem SA
            // (IV must be the sequence number) refuses it after the tag verified.
            foreign_ivs += 1;
            let mut inb = InboundSa::with_params(spi(spi_v), sa_keys(&key, &salt), params);
            let mut buf = datagram.clone();
            let opened = inb.open(&mut buf, 0..datagram.len()).unwrap();
            assert_eq!(&buf[opened.payload.clone()], &payload[..], "{}", v["name"]);
            assert_eq!(opened.seq, seq);
            let strict = InboundParams {
                peer_iv: PeerIv::Sequence,
                ..params
            };
            let mut inb = InboundSa::with_params(spi(spi_v), sa_keys(&key, &salt), strict);
            let mut buf = datagram.clone();
            assert_eq!(
                inb.open(&mut buf, 0..datagram.len()),
                Err(OpenError::IvMismatch)
            );
            continue;
        }

        // seal: our bytes equal theirs.
        let mut out = OutboundSa::with_mode(spi(spi_v), sa_keys(&key, &salt), mode);
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
        let mut inb = InboundSa::with_params(spi(spi_v), sa_keys(&key, &salt), params);
        let mut buf = datagram.clone();
        buf.extend_from_slice(&[0xee; 7]); // trailing bytes outside the range stay untouched
        let opened = inb.open(&mut buf, 0..datagram.len()).unwrap();
        assert_eq!(&buf[opened.payload.clone()], &payload[..]);
        assert_eq!(opened.next_header, nh);
        assert_eq!(opened.seq, seq);
        assert_eq!(&buf[datagram.len()..], &[0xee; 7]);
    }
    assert_eq!(
        pads_seen, [[true; 4]; 2],
        "every padding length is covered in both modes"
    );
    assert!(foreign_ivs >= 2);
}

#[test]
fn a_default_sa_is_tandems_own_esn_sa_with_the_largest_window() {
    let k = sa_keys(&[1; 32], &[1; 4]);
    let inb = InboundSa::new(spi(0x100), k.clone());
    assert_eq!(
        inb.params(),
        InboundParams {
            seq: SeqMode::Esn,
            window: WindowSize::new(8128).unwrap(),
            peer_iv: PeerIv::Sequence,
        }
    );
    assert_eq!(OutboundSa::new(spi(0x100), k).mode(), SeqMode::Esn);
    assert_eq!(SeqMode::Esn.rekey_after(), 1 << 27);
    assert_eq!(SeqMode::Esn.reject_after(), 1 << 28);
    assert_eq!(SeqMode::Bits32.rekey_after(), (1 << 32) - (1 << 27));
    assert_eq!(SeqMode::Bits32.reject_after(), u64::from(u32::MAX));
}

#[test]
fn without_esn_sealed_packets_decrypt_with_the_aes_gcm_crate_and_its_packets_open_with_ours() {
    let key = [0x22u8; 32];
    let salt = [9, 8, 7, 6];
    let spi_v = 0xA0B0_C0D0;
    let mut out = OutboundSa::with_mode(spi(spi_v), sa_keys(&key, &salt), SeqMode::Bits32);
    let mut inb = InboundSa::with_params(spi(spi_v), sa_keys(&key, &salt), ikev2_params(1024));
    // Near the top of the 32-bit space too: the AAD must carry exactly 32 bits.
    let starts = [1u64, (1 << 31) - 2, REKEY_AFTER_PACKETS_32 - 40];
    for (round, &start) in starts.iter().enumerate() {
        out.set_next_seq_for_testing(start);
        for (i, len) in (0..=40).chain([1419, 1420, 1421]).enumerate() {
            let payload: Vec<u8> = (0..len).map(|j| (j * 13 + i + round) as u8).collect();

            // ours -> oracle, with the 8-byte AAD; the IV is still the 64-bit counter.
            let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
            buf[HEADROOM..HEADROOM + len].copy_from_slice(&payload);
            let sealed = out
                .seal(&mut buf, HEADROOM..HEADROOM + len, NEXT_HEADER_IPV4)
                .unwrap();
            let d = &buf[sealed.datagram.clone()];
            assert_eq!(&d[8..16], &sealed.seq.to_be_bytes(), "IV = 64-bit counter");
            let ct = &d[16..];
            let plain = oracle_open(
                &key,
                &nonce(&salt, sealed.seq),
                &aad32(spi_v, sealed.seq as u32),
                ct,
            )
            .unwrap();
            assert_eq!(&plain[..len], &payload[..]);
            assert!(
                oracle_open(&key, &nonce(&salt, sealed.seq), &aad(spi_v, sealed.seq), ct).is_none(),
                "the ESN AAD must not verify a 32-bit packet"
            );

            // oracle -> ours, with an IV that is not the sequence number (as Linux's seqiv).
            let seq = start + i as u64;
            let iv = seq ^ 0x0123_4567_89AB_CDEF;
            let mut wire = oracle_datagram_32(
                &key,
                &salt,
                spi_v,
                (seq as u32, iv),
                &payload,
                NEXT_HEADER_LIVENESS,
            );
            let n = wire.len();
            let opened = inb.open(&mut wire, 0..n).unwrap();
            assert_eq!(&wire[opened.payload], &payload[..]);
            assert_eq!(opened.seq, seq);
        }
    }
}

#[test]
fn an_esn_sa_refuses_a_32_bit_packet_and_a_32_bit_sa_refuses_an_esn_packet() {
    let key = [0x33u8; 32];
    let salt = [1, 1, 2, 2];
    let spi_v = 0x4242;
    // Sequence numbers above 2^32 would be told apart by the header alone; below it only the
    // AAD's length differs (SPI || 0 || seq against SPI || seq).
    for (seal_mode, open_mode) in [
        (SeqMode::Bits32, SeqMode::Esn),
        (SeqMode::Esn, SeqMode::Bits32),
    ] {
        let mut out = OutboundSa::with_mode(spi(spi_v), sa_keys(&key, &salt), seal_mode);
        let params = InboundParams {
            seq: open_mode,
            ..InboundParams::default()
        };
        let mut inb = InboundSa::with_params(spi(spi_v), sa_keys(&key, &salt), params);
        let mut buf = vec![0u8; HEADROOM + 20 + TAILROOM];
        let s = out.seal(&mut buf, HEADROOM..HEADROOM + 20, 4).unwrap();
        assert_eq!(inb.open(&mut buf, s.datagram), Err(OpenError::BadTag));
        assert_eq!(inb.highest_seq(), 0, "a refused packet moves no window");
    }
}

#[test]
fn without_esn_seal_signals_rekey_at_2_32_minus_2_27_and_refuses_after_2_32_minus_1() {
    let k = sa_keys(&[0x44; 32], &[4, 4, 4, 4]);
    let mut a = OutboundSa::with_mode(spi(0x777), k.clone(), SeqMode::Bits32);
    let mut b = InboundSa::with_params(spi(0x777), k, ikev2_params(64));
    let mut buf = vec![0u8; HEADROOM + 20 + TAILROOM];
    let p = HEADROOM..HEADROOM + 20;

    // The ESN limits do not apply: 2^27 and 2^28 pass without a signal.
    for seq in [REKEY_AFTER_PACKETS, REJECT_AFTER_PACKETS + 1] {
        a.set_next_seq_for_testing(seq);
        let s = a.seal(&mut buf, p.clone(), 4).unwrap();
        assert!(!s.rekey_due, "seq {seq}");
        assert!(b.open(&mut buf, s.datagram).is_ok());
    }
    a.set_next_seq_for_testing(REKEY_AFTER_PACKETS_32 - 1);
    assert!(!a.seal(&mut buf, p.clone(), 4).unwrap().rekey_due);
    let s = a.seal(&mut buf, p.clone(), 4).unwrap();
    assert_eq!(s.seq, REKEY_AFTER_PACKETS_32);
    assert!(
        s.rekey_due,
        "after 2^32 - 2^27 packets the SA asks for a rekey"
    );
    assert!(b.open(&mut buf, s.datagram).is_ok());

    a.set_next_seq_for_testing(REJECT_AFTER_PACKETS_32);
    let s = a.seal(&mut buf, p.clone(), 4).unwrap();
    assert_eq!(s.seq, u64::from(u32::MAX), "2^32 - 1 is the last number");
    let last = buf[s.datagram.clone()].to_vec();
    assert!(b.open(&mut buf, s.datagram).is_ok());
    assert!(a.exhausted());
    assert_eq!(a.seal(&mut buf, p.clone(), 4), Err(SealError::Exhausted));
    assert_eq!(a.next_seq(), 1 << 32, "a refusal consumes no number");

    // The receiver does not wrap either: after 2^32 - 1, a low number is old, not the next block.
    let mut c = OutboundSa::with_mode(
        spi(0x777),
        sa_keys(&[0x44; 32], &[4, 4, 4, 4]),
        SeqMode::Bits32,
    );
    let s = c.seal(&mut buf, p.clone(), 4).unwrap();
    assert_eq!(s.seq, 1);
    assert_eq!(
        b.open(&mut buf, s.datagram),
        Err(OpenError::Replay(ReplayError::TooOld))
    );
    let mut again = last.clone();
    let n = again.len();
    assert_eq!(
        b.open(&mut again, 0..n),
        Err(OpenError::Replay(ReplayError::Duplicate))
    );
}

#[test]
fn an_ikev2_window_of_64_refuses_what_tandems_window_still_takes() {
    let k = sa_keys(&[0x55; 32], &[5, 5, 5, 5]);
    let mut a = OutboundSa::with_mode(spi(0x888), k.clone(), SeqMode::Bits32);
    let mut pkts = Vec::new();
    for _ in 0..200 {
        let mut buf = vec![0u8; HEADROOM + 8 + TAILROOM];
        let s = a.seal(&mut buf, HEADROOM..HEADROOM + 8, 4).unwrap();
        pkts.push(buf[s.datagram].to_vec());
    }
    let wide = InboundParams {
        window: WindowSize::MAX,
        ..ikev2_params(64)
    };
    for (params, oldest_ok) in [(ikev2_params(64), 200 - 63), (wide, 1)] {
        let mut b = InboundSa::with_params(spi(0x888), k.clone(), params);
        let mut p = pkts[199].clone();
        let n = p.len();
        assert_eq!(b.open(&mut p, 0..n).unwrap().seq, 200);
        for seq in (1..200u64).rev() {
            let mut p = pkts[seq as usize - 1].clone();
            let got = b.open(&mut p, 0..n);
            if seq >= oldest_ok {
                assert_eq!(got.unwrap().seq, seq);
            } else {
                assert_eq!(
                    got,
                    Err(OpenError::Replay(ReplayError::TooOld)),
                    "seq {seq}"
                );
            }
        }
    }
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
