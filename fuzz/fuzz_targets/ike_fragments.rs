//! SKF reassembly (RFC 7383) in a responder waiting for IKE_AUTH: the input is a sequence of
//! fragments — number, total, first-payload type and a share of the plaintext each — sealed
//! with the real SK_ei as message ID 1, so they pass authentication and exercise the
//! reassembly (out of order, duplicates, inconsistent totals, too many, oversize) and the
//! reassembled message's processing; or raw datagrams with an SKF header. Invariants: no panic;
//! what the responder sends parses; never established without the PSK's AUTH.
#![no_main]

#[path = "ike_common.rs"]
mod ike_common;

use libfuzzer_sys::fuzz_target;
use tandem_ike::wire::ExchangeType;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut peer = ike_common::Peer::awaiting_auth();
    let mut iv = 1_000;
    // Each fragment: number (1), total (1), first payload (1), length (1), then the bytes.
    while let [number, total, first, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (piece, next) = tail.split_at(n);
        rest = next;
        let d = if mode & 1 == 0 {
            let header = peer.header(ExchangeType::IkeAuth, 1);
            iv += 1;
            tandem_ike::frag::seal_fragment(
                &header,
                *first,
                u16::from(*number),
                u16::from(*total),
                piece,
                &peer.keys.sk_ei,
                iv,
            )
        } else {
            // Unsealed: an SKF header with the fields as given and the piece as its body.
            let mut d = peer.header(ExchangeType::IkeAuth, 1);
            d.message_id = u32::from(*number >> 4);
            let mut out = tandem_ike::wire::Message {
                header: d,
                payloads: Vec::new(),
            }
            .to_bytes();
            out[16] = tandem_ike::wire::payload_type::SKF;
            out.extend_from_slice(&[*first, 0]);
            out.extend_from_slice(&((8 + piece.len()) as u16).to_be_bytes());
            out.extend_from_slice(&u16::from(*number).to_be_bytes());
            out.extend_from_slice(&u16::from(*total).to_be_bytes());
            out.extend_from_slice(piece);
            let len = out.len() as u32;
            out[24..28].copy_from_slice(&len.to_be_bytes());
            out
        };
        peer.deliver(&d);
    }
    assert!(!peer.sa.is_established(), "established without the PSK");
});
