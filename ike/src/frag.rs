//! IKE fragmentation (RFC 7383): an encrypted IKE message too large for the path is sent as
//! several IKE messages, each carrying one Encrypted Fragment payload (SKF, type 53) that is
//! sealed on its own, so a receiver authenticates every fragment before it keeps it.
//!
//! ```text
//! HDR(next = SKF) | SKF generic header (next = first inner payload in fragment 1, else 0)
//!                 | Fragment Number | Total Fragments | IV | ciphertext | ICV
//! AAD = the IKE header .. Total Fragments (RFC 7383 §2.5.3 with RFC 5282 §5.1)
//! ```
//!
//! Both ends announce IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (§2.3); only then, and only
//! for messages after IKE_SA_INIT that are larger than the configured size, does a sender
//! fragment ([`seal_fragments`]). IKE_SA_INIT itself is never fragmented.
//!
//! Reassembly ([`Reassembly`]) keeps at most [`MAX_FRAGMENTS`] fragments and
//! [`crate::wire::MAX_MESSAGE_LEN`] bytes of plaintext per message; duplicates are ignored, order
//! does not matter, a retransmission with a larger Total Fragments (the sender's PMTU discovery,
//! §2.5.2) starts over and one with a smaller total is dropped, and an incomplete message is
//! dropped after [`REASSEMBLY_TIMEOUT`]. The IKE SA holds one reassembly for the peer's
//! requests and one for its responses ([`crate::sa`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ring::aead::Aad;
use tandem_crypto::SaKeys;

use crate::wire::{
    GENERIC_HEADER_LEN, HEADER_LEN, Header, MAX_MESSAGE_LEN, ParseError, Payload, SK_ICV_LEN,
    SK_IV_LEN, aead_key, parse_header, payload_type, sk_nonce, write_chain, write_header,
};

/// The SKF payload's fields after its generic header: Fragment Number and Total Fragments.
pub const SKF_NUMBERS_LEN: usize = 4;
/// Bytes a fragment adds around its share of the plaintext: IKE header, SKF header with the
/// numbers, IV, ICV and the one-byte pad length.
pub const FRAGMENT_OVERHEAD: usize =
    HEADER_LEN + GENERIC_HEADER_LEN + SKF_NUMBERS_LEN + SK_IV_LEN + SK_ICV_LEN + 1;
/// The default largest IP datagram of an IKE message we send (fragments included): 1280, the
/// IPv6 minimum MTU, which IPv4 paths carry too in practice (strongSwan's default as well).
/// RFC 7383 §2.5.1 lets the implementation choose.
pub const DEFAULT_FRAGMENT_SIZE: usize = 1280;
/// The smallest fragment size we accept in the configuration: IPv4's minimum reassembly size
/// (RFC 791), which RFC 7383 §2.5.1 names for IPv4.
pub const MIN_FRAGMENT_SIZE: usize = 576;
/// The most fragments one message may have. Our messages need at most a few; 64 fragments of
/// even the smallest size carry the largest message a peer sends (strongSwan limits a message
/// to 10,000 bytes).
pub const MAX_FRAGMENTS: u16 = 64;
/// How long an incomplete message is kept. Tuning: longer than a peer's first retransmission
/// interval (strongSwan: 4 s, ours: 1 s), so a lost fragment can be filled in by the
/// retransmission of the whole set; short enough to free the memory of a message that never
/// completes.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(10);
/// UDP header length.
const UDP_HEADER_LEN: usize = 8;
/// The non-ESP marker on the NAT-T port (RFC 3948 §2.2).
const MARKER_LEN: usize = 4;

/// Whether we fragment, and the largest IP datagram we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragmentation {
    /// We neither announce support nor fragment (received fragments are still reassembled if
    /// the peer sends them anyway).
    Off,
    /// Announce support; fragment encrypted messages whose IP datagram would exceed this size.
    On {
        /// The largest IP datagram (IP and UDP headers and the non-ESP marker included).
        max_datagram: usize,
    },
}

impl Default for Fragmentation {
    fn default() -> Self {
        Self::On {
            max_datagram: DEFAULT_FRAGMENT_SIZE,
        }
    }
}

/// The largest IKE message (from the IKE header on) that fits an IP datagram of
/// `max_datagram` bytes to a peer at `peer` (IPv6 when unknown: the larger header), assuming
/// the non-ESP marker (it may be on 4500).
pub fn max_message_len(max_datagram: usize, peer: Option<IpAddr>) -> usize {
    let ip = match peer {
        Some(IpAddr::V4(_)) => 20,
        _ => 40,
    };
    max_datagram.saturating_sub(ip + UDP_HEADER_LEN + MARKER_LEN)
}

/// Seals `inner` as fragments of at most `max_len` bytes each (IKE header included), with IVs
/// taken from `next_iv` (one per fragment, never repeated under the key). `header.exchange` must
/// not be IKE_SA_INIT. Returns the datagrams in order.
pub fn seal_fragments(
    header: &Header,
    inner: &[Payload],
    keys: &SaKeys,
    next_iv: &mut u64,
    max_len: usize,
) -> Vec<Vec<u8>> {
    let mut plain = Vec::with_capacity(1024);
    write_chain(inner, &mut plain, payload_type::NONE);
    let first = inner.first().map_or(0, Payload::type_number);
    // At least one byte of plaintext per fragment, even for an absurd max_len.
    let chunk = max_len.saturating_sub(FRAGMENT_OVERHEAD).max(1);
    let pieces: Vec<&[u8]> = if plain.is_empty() {
        vec![&[][..]]
    } else {
        plain.chunks(chunk).collect()
    };
    let total = pieces.len() as u16;
    let mut out = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.into_iter().enumerate() {
        let number = i as u16 + 1;
        let first_payload = if number == 1 {
            first
        } else {
            payload_type::NONE
        };
        out.push(seal_fragment(
            header,
            first_payload,
            number,
            total,
            piece,
            keys,
            *next_iv,
        ));
        *next_iv += 1;
    }
    out
}

/// One fragment: `header` with an SKF payload numbered `number` of `total` holding `piece`
/// (a share of the inner payload chain) sealed under `keys` with explicit IV `iv`.
pub fn seal_fragment(
    header: &Header,
    first_payload: u8,
    number: u16,
    total: u16,
    piece: &[u8],
    keys: &SaKeys,
    iv: u64,
) -> Vec<u8> {
    let mut d = Vec::with_capacity(piece.len() + FRAGMENT_OVERHEAD);
    write_header(header, payload_type::SKF, &mut d);
    d.push(first_payload);
    d.push(0);
    let skf_len =
        (GENERIC_HEADER_LEN + SKF_NUMBERS_LEN + SK_IV_LEN + piece.len() + 1 + SK_ICV_LEN) as u16;
    d.extend_from_slice(&skf_len.to_be_bytes());
    d.extend_from_slice(&number.to_be_bytes());
    d.extend_from_slice(&total.to_be_bytes());
    let aad_end = d.len();
    let iv = iv.to_be_bytes();
    d.extend_from_slice(&iv);
    let pt_start = d.len();
    d.extend_from_slice(piece);
    d.push(0); // Pad Length: GCM needs no padding (RFC 5282 §3)
    let total_len = (d.len() + SK_ICV_LEN) as u32;
    d[24..28].copy_from_slice(&total_len.to_be_bytes());
    let (aad, rest) = d.split_at_mut(pt_start);
    // As in `seal_message`: ring's AES-GCM only fails above 64 GiB per message.
    #[allow(clippy::expect_used)]
    let tag = aead_key(keys)
        .seal_in_place_separate_tag(sk_nonce(keys, &iv), Aad::from(&aad[..aad_end]), rest)
        .expect("IKE fragment far below the AES-GCM length limit");
    d.extend_from_slice(tag.as_ref());
    d
}

/// One received fragment, parsed but not yet opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The IKE header.
    pub header: Header,
    /// The type of the first inner payload (fragment 1 only; 0 in the others).
    pub first_payload: u8,
    /// This fragment's number, 1..=`total`.
    pub number: u16,
    /// How many fragments the message has.
    pub total: u16,
    datagram: &'a [u8],
}

/// Whether a datagram is an IKE message whose first payload is an SKF (checks only the header's
/// next-payload byte; [`parse_fragment`] checks the rest).
pub fn is_fragment(datagram: &[u8]) -> bool {
    datagram.get(16) == Some(&payload_type::SKF)
}

/// Parses a datagram holding one Encrypted Fragment payload, and nothing else.
pub fn parse_fragment(datagram: &[u8]) -> Result<Fragment<'_>, ParseError> {
    if datagram.len() > MAX_MESSAGE_LEN {
        return Err(ParseError::BadLength("message"));
    }
    let (header, next) = parse_header(datagram)?;
    if next != payload_type::SKF {
        return Err(ParseError::Invalid("not an encrypted fragment"));
    }
    let body = &datagram[HEADER_LEN..];
    let min = GENERIC_HEADER_LEN + SKF_NUMBERS_LEN + SK_IV_LEN + SK_ICV_LEN + 1;
    if body.len() < min {
        return Err(ParseError::Truncated("encrypted fragment"));
    }
    let len = u16::from_be_bytes([body[2], body[3]]) as usize;
    if len != body.len() {
        // The SKF payload must be the only payload: its length ends the datagram.
        return Err(ParseError::BadLength("encrypted fragment"));
    }
    let number = u16::from_be_bytes([body[4], body[5]]);
    let total = u16::from_be_bytes([body[6], body[7]]);
    if number == 0 || total == 0 || number > total {
        return Err(ParseError::Invalid("fragment number"));
    }
    let first_payload = body[0];
    if number > 1 && first_payload != payload_type::NONE {
        return Err(ParseError::Invalid(
            "next payload of a fragment after the first",
        ));
    }
    Ok(Fragment {
        header,
        first_payload,
        number,
        total,
        datagram,
    })
}

impl Fragment<'_> {
    /// The datagram this fragment came in.
    pub fn bytes(&self) -> &[u8] {
        self.datagram
    }

    /// Authenticates and decrypts the fragment with the sender's key: its share of the inner
    /// payload chain, padding removed.
    pub fn open(&self, keys: &SaKeys) -> Result<Vec<u8>, ParseError> {
        let aad_end = HEADER_LEN + GENERIC_HEADER_LEN + SKF_NUMBERS_LEN;
        let mut iv = [0u8; SK_IV_LEN];
        iv.copy_from_slice(&self.datagram[aad_end..aad_end + SK_IV_LEN]);
        let mut ct = self.datagram[aad_end + SK_IV_LEN..].to_vec();
        let pt = aead_key(keys)
            .open_in_place(
                sk_nonce(keys, &iv),
                Aad::from(&self.datagram[..aad_end]),
                &mut ct,
            )
            .map_err(|_| ParseError::DecryptFailed)?;
        let (&pad_len, rest) = pt
            .split_last()
            .ok_or(ParseError::BadLength("encrypted fragment"))?;
        let n = rest
            .len()
            .checked_sub(pad_len as usize)
            .ok_or(ParseError::BadLength("encrypted fragment padding"))?;
        let mut plain = rest.to_vec();
        plain.truncate(n);
        Ok(plain)
    }
}

/// What [`Reassembly::add`] did with a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Kept; the message is not complete yet.
    Stored,
    /// Already had it (a duplicate or a retransmission): ignored.
    Duplicate,
    /// Not kept: too many fragments, too many bytes, or an older (smaller) fragment set.
    Refused(&'static str),
    /// The message is complete: the type of its first payload and its whole inner chain.
    Complete {
        /// Type of the first inner payload.
        first_payload: u8,
        /// The inner payload chain, all fragments' plaintext in order.
        plain: Vec<u8>,
        /// The first fragment's datagram, as received (identifies the message for the
        /// response cache).
        first_datagram: Vec<u8>,
    },
}

/// The fragments of one message (one message ID, one direction) received so far.
#[derive(Debug)]
pub struct Reassembly {
    message_id: u32,
    total: u16,
    parts: Vec<Option<Vec<u8>>>,
    first_payload: u8,
    first_datagram: Vec<u8>,
    bytes: usize,
    expires: Instant,
}

impl Reassembly {
    /// The message ID being reassembled.
    pub fn message_id(&self) -> u32 {
        self.message_id
    }

    /// When this reassembly is dropped if still incomplete.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Whether `message_id` is this reassembly's message.
    pub fn is_for(&self, message_id: u32) -> bool {
        self.message_id == message_id
    }

    /// Adds an authenticated fragment's plaintext to `slot` (created for the first fragment of
    /// a message; replaced by a fragment of another message ID, which the caller has checked
    /// is the one it expects now).
    pub fn add(
        slot: &mut Option<Reassembly>,
        now: Instant,
        frag: &Fragment<'_>,
        plain: Vec<u8>,
    ) -> Added {
        if frag.total > MAX_FRAGMENTS {
            return Added::Refused("more fragments than we reassemble");
        }
        let restart = match slot {
            None => true,
            Some(r) if r.message_id != frag.header.message_id => true,
            // A larger total: the sender cut the message smaller (PMTU discovery, RFC 7383
            // §2.5.2); the older, bigger fragments are useless now.
            Some(r) if frag.total > r.total => true,
            Some(r) if frag.total < r.total => {
                return Added::Refused("fragment of an older, larger cut of the message");
            }
            Some(_) => false,
        };
        if restart {
            *slot = Some(Reassembly {
                message_id: frag.header.message_id,
                total: frag.total,
                parts: vec![None; frag.total as usize],
                first_payload: 0,
                first_datagram: Vec::new(),
                bytes: 0,
                expires: now + REASSEMBLY_TIMEOUT,
            });
        }
        let Some(r) = slot.as_mut() else {
            return Added::Refused("no reassembly");
        };
        let i = usize::from(frag.number - 1);
        if r.parts[i].is_some() {
            return Added::Duplicate;
        }
        if r.bytes + plain.len() > MAX_MESSAGE_LEN {
            return Added::Refused("reassembled message too large");
        }
        r.bytes += plain.len();
        r.parts[i] = Some(plain);
        if frag.number == 1 {
            r.first_payload = frag.first_payload;
            r.first_datagram = frag.bytes().to_vec();
        }
        if r.parts.iter().any(Option::is_none) {
            return Added::Stored;
        }
        let Some(done) = slot.take() else {
            return Added::Refused("no reassembly");
        };
        let mut plain = Vec::with_capacity(done.bytes);
        for p in done.parts.into_iter().flatten() {
            plain.extend_from_slice(&p);
        }
        Added::Complete {
            first_payload: done.first_payload,
            plain,
            first_datagram: done.first_datagram,
        }
    }
}
