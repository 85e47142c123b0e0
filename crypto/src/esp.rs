//! The ESP security association (RFC 4303 with AES-256-GCM per RFC 4106), sealed and opened
//! **in place** in a caller buffer.
//!
//! Wire (docs/protocol.md): `SPI (4) | seq low (4) | IV (8) = 64-bit seq | ciphertext | ICV (16)`;
//! nonce = salt (4) || IV (8); plaintext = inner packet || pad 1,2,3.. || pad length || next
//! header, padded so that the ciphertext length is a multiple of 4.
//!
//! Two sequence-number modes ([`SeqMode`]), which differ only in the AAD and the limits:
//! - [`SeqMode::Esn`], the default and tandem's own SAs: 64-bit extended sequence numbers, the
//!   high half inferred by the receiver (RFC 4303 Appendix A), AAD = SPI || seq high || seq low
//!   (RFC 4106 §5); rekey after [`REKEY_AFTER_PACKETS`], refusal past [`REJECT_AFTER_PACKETS`].
//! - [`SeqMode::Bits32`], IKEv2 Child SAs without ESN (RFC 4303 §2.2.1): AAD = SPI || seq
//!   (RFC 4106 §5); the counter must not cycle (RFC 4303 §3.3.3), so rekey after
//!   [`REKEY_AFTER_PACKETS_32`] and refusal past [`REJECT_AFTER_PACKETS_32`].
//!
//! In both modes the IV we send is the 64-bit counter (unique per key, RFC 4106 §3.1). What the
//! peer sends as IV is checked only for tandem's own SAs ([`PeerIv::Sequence`]): a standard peer
//! may pick any unique IV (Linux's `seqiv` XORs the counter with a salt), so IKEv2 SAs take
//! [`PeerIv::Any`] and feed the IV on the wire to the nonce as RFC 4106 §3.1 says.
//!
//! `seal`: the inner packet sits at `buf[payload]` with [`HEADROOM`] free bytes before it and
//! [`TAILROOM`] after it; the header goes into the headroom, the trailer and ICV into the tailroom,
//! the packet itself is encrypted where it lies.
//! `open`: length -> SPI -> replay pre-check -> AEAD -> IV == seq -> padding -> replay commit; the
//! window changes only for packets that authenticated.

use std::ops::Range;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::Spi;
use crate::replay::{ReplayError, ReplayWindow, WINDOW, WindowSize};

/// SPI (4) + sequence number low (4).
pub const ESP_HEADER_LEN: usize = 8;
/// Explicit IV: the 64-bit sequence number (RFC 4106 §3.1).
pub const IV_LEN: usize = 8;
/// Integrity check value: the full 16-byte GCM tag (RFC 4106 §2, ICV length 16).
pub const ICV_LEN: usize = 16;
/// Bytes written before the inner packet: ESP header + IV.
pub const HEADROOM: usize = ESP_HEADER_LEN + IV_LEN;
/// Maximum padding to reach 4-byte alignment of the ciphertext.
pub const MAX_PAD: usize = 3;
/// Pad length + next header (RFC 4303 §2.4–2.6).
pub const TRAILER_LEN: usize = 2;
/// Bytes that `seal` may write after the inner packet: padding, trailer, ICV.
pub const TAILROOM: usize = MAX_PAD + TRAILER_LEN + ICV_LEN;
/// Total growth of a packet by ESP at most.
pub const OVERHEAD: usize = HEADROOM + TAILROOM;
/// The smallest valid datagram: header, IV, an aligned ciphertext of 4 bytes (2 pad + trailer), ICV.
pub const MIN_DATAGRAM_LEN: usize = HEADROOM + 4 + ICV_LEN;
/// GCM salt length (RFC 4106 §4).
pub const SALT_LEN: usize = 4;
/// AES-256 key length.
pub const AES_KEY_LEN: usize = 32;

/// Next header: IPv4 (IANA protocol number 4).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next header: IPv6 (41).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// Next header: dummy packet, accepted and dropped (RFC 4303 §2.6, 59 = "no next header").
pub const NEXT_HEADER_DUMMY: u8 = 59;
/// Next header: tandem tunnel control inside the SA (253, RFC 3692 experimental).
pub const NEXT_HEADER_LIVENESS: u8 = 253;

/// Packets after which a new SA should be negotiated (docs/protocol.md): 2^27. RFC 8446 §5.5 allows
/// 2^24.5 records of 2^14 bytes (2^38.5 bytes) per AES-GCM key; 2^27 packets of an MTU-sized
/// 1420 bytes (~2^10.5) are 2^37.5 bytes, inside that budget.
pub const REKEY_AFTER_PACKETS: u64 = 1 << 27;
/// Packets after which an SA is never used to send (docs/protocol.md): sequence numbers above this are
/// refused by `seal` and by `open`.
pub const REJECT_AFTER_PACKETS: u64 = 1 << 28;
/// Packets after which a 32-bit SA asks for a new Child SA: 2^32 - 2^27, leaving 2^27 sequence
/// numbers (the ESN mode's whole rekey budget) for the rekey to finish before the counter runs out.
///
/// A 32-bit SA is bounded by its sequence space, not by [`REKEY_AFTER_PACKETS`]: the AES-GCM
/// budget of RFC 8446 §5.5 is the margin tandem picks for its own SAs, while an IKEv2 Child SA is
/// renewed by its negotiated lifetime (AWS: at most 1 h, i.e. 2^28 packets at 1 Gbit/s and 1420
/// bytes). 2^32 such packets are 2^38.5 AES blocks, a distinguishing advantage of about 2^-51
/// (birthday bound of GCM, (blocks)^2 / 2^128).
pub const REKEY_AFTER_PACKETS_32: u64 = (1 << 32) - (1 << 27);
/// Packets after which a 32-bit SA is never used to send: 2^32 - 1, the last sequence number
/// before the counter would cycle (RFC 4303 §3.3.3).
pub const REJECT_AFTER_PACKETS_32: u64 = (1 << 32) - 1;

/// How an SA numbers its packets (RFC 4303 §2.2.1); the module doc gives the differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeqMode {
    /// 64-bit extended sequence numbers: tandem's SAs, IKEv2 SAs that negotiated ESN.
    #[default]
    Esn,
    /// 32-bit sequence numbers: IKEv2 SAs without ESN (AWS does not negotiate ESN).
    Bits32,
}

impl SeqMode {
    /// Packets after which a new SA should be negotiated.
    pub const fn rekey_after(self) -> u64 {
        match self {
            Self::Esn => REKEY_AFTER_PACKETS,
            Self::Bits32 => REKEY_AFTER_PACKETS_32,
        }
    }

    /// The highest sequence number the SA may send or accept.
    pub const fn reject_after(self) -> u64 {
        match self {
            Self::Esn => REJECT_AFTER_PACKETS,
            Self::Bits32 => REJECT_AFTER_PACKETS_32,
        }
    }

    /// The AAD for `seq`: 12 bytes with ESN, 8 without (RFC 4106 §5), as a buffer and its length.
    fn aad(self, spi: u32, seq: u64) -> ([u8; 12], usize) {
        let mut a = [0u8; 12];
        a[..4].copy_from_slice(&spi.to_be_bytes());
        match self {
            Self::Esn => {
                a[4..8].copy_from_slice(&((seq >> 32) as u32).to_be_bytes());
                a[8..].copy_from_slice(&(seq as u32).to_be_bytes());
                (a, 12)
            }
            Self::Bits32 => {
                a[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
                (a, 8)
            }
        }
    }

    /// The full sequence number of a datagram whose low half is `seq_lo`, given the window's top.
    fn full_seq(self, top: u64, seq_lo: u32) -> u64 {
        match self {
            Self::Esn => infer_seq(top, seq_lo),
            Self::Bits32 => u64::from(seq_lo),
        }
    }
}

/// What the receiver requires of the IV on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerIv {
    /// The IV must equal the 64-bit sequence number (tandem's SAs, docs/protocol.md): a packet
    /// that authenticates with another IV is refused ([`OpenError::IvMismatch`]).
    #[default]
    Sequence,
    /// Any IV (RFC 4106 §3.1: the encryptor picks a unique IV in any manner): standard peers.
    Any,
}

/// How an inbound SA reads datagrams: sequence-number mode, replay window and IV rule.
/// The default is tandem's own SA: ESN, the largest window, IV = sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboundParams {
    /// ESN or 32-bit sequence numbers.
    pub seq: SeqMode,
    /// Packets behind the highest one still accepted.
    pub window: WindowSize,
    /// What the peer's IV must be.
    pub peer_iv: PeerIv,
}

/// An AES-256 key and a 4-byte salt for one direction of one SA; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SaKeys {
    /// AES-256 key.
    pub key: [u8; AES_KEY_LEN],
    /// GCM salt, the first 4 bytes of every nonce.
    pub salt: [u8; SALT_LEN],
}

impl SaKeys {
    /// The key-log form of docs/protocol.md: 64 hex digits of key then 8 of salt.
    pub fn keylog_hex(&self) -> String {
        let mut s = String::with_capacity(2 * (AES_KEY_LEN + SALT_LEN));
        for b in self.key.iter().chain(self.salt.iter()) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl std::fmt::Debug for SaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaKeys(..)")
    }
}

/// The SPI of an ESP datagram, or `None` if it is too short or is a control packet (SPI 0 is the
/// non-ESP marker of RFC 3948).
pub fn peek_spi(datagram: &[u8]) -> Option<u32> {
    let spi = u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?);
    (spi != 0).then_some(spi)
}

fn nonce(salt: &[u8; SALT_LEN], seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..SALT_LEN].copy_from_slice(salt);
    n[SALT_LEN..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aead_key(keys: &SaKeys) -> LessSafeKey {
    // AES_256_GCM takes exactly 32 bytes, which the array type guarantees.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, &keys.key).expect("32-byte AES-256 key");
    LessSafeKey::new(unbound)
}

/// Why `seal` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// `payload` is not inside the buffer.
    #[error("payload range outside the buffer")]
    OutOfBounds,
    /// Fewer than [`HEADROOM`] bytes before the payload.
    #[error("not enough headroom before the payload")]
    NoHeadroom,
    /// Not enough bytes after the payload for padding, trailer and ICV.
    #[error("not enough tailroom after the payload")]
    NoTailroom,
    /// The SA has sent its mode's limit ([`REJECT_AFTER_PACKETS`], or
    /// [`REJECT_AFTER_PACKETS_32`] without ESN): it must not send again (docs/protocol.md).
    #[error("SA exhausted: sequence number limit reached")]
    Exhausted,
}

/// A sealed datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Where the ESP datagram lies in the buffer.
    pub datagram: Range<usize>,
    /// The sequence number used.
    pub seq: u64,
    /// The SA reached its mode's rekey point ([`SeqMode::rekey_after`]): start a new handshake.
    pub rekey_due: bool,
}

/// The sending half of an SA: keys, SPI (the peer's) and the 64-bit send counter.
pub struct OutboundSa {
    spi: Spi,
    keys: SaKeys,
    aead: LessSafeKey,
    mode: SeqMode,
    /// Next sequence number to use; starts at 1.
    next_seq: u64,
}

impl std::fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &self.spi)
            .field("mode", &self.mode)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl OutboundSa {
    /// A fresh ESN SA sending to `spi` (chosen by the peer) under `keys`.
    pub fn new(spi: Spi, keys: SaKeys) -> Self {
        Self::with_mode(spi, keys, SeqMode::Esn)
    }

    /// A fresh SA sending to `spi` under `keys` with the given sequence-number mode.
    pub fn with_mode(spi: Spi, keys: SaKeys, mode: SeqMode) -> Self {
        let aead = aead_key(&keys);
        Self {
            spi,
            keys,
            aead,
            mode,
            next_seq: 1,
        }
    }

    /// The sequence-number mode.
    pub fn mode(&self) -> SeqMode {
        self.mode
    }

    /// The SPI written in every datagram.
    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// The keys (for the debugging key log only).
    pub fn keys(&self) -> &SaKeys {
        &self.keys
    }

    /// The sequence number the next `seal` will use (the count of packets sent is one less).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the mode's rekey point ([`SeqMode::rekey_after`] packets) has been reached.
    pub fn rekey_due(&self) -> bool {
        self.next_seq > self.mode.rekey_after()
    }

    /// Whether the SA may not send any more ([`SeqMode::reject_after`] packets sent).
    pub fn exhausted(&self) -> bool {
        self.next_seq > self.mode.reject_after()
    }

    /// Test hook: jump the send counter (to exercise the limits without 2^27 packets).
    #[doc(hidden)]
    pub fn set_next_seq_for_testing(&mut self, seq: u64) {
        self.next_seq = seq.max(1);
    }

    /// Encrypts `buf[payload]` in place into an ESP datagram.
    pub fn seal(
        &mut self,
        buf: &mut [u8],
        payload: Range<usize>,
        next_header: u8,
    ) -> Result<Sealed, SealError> {
        if payload.start > payload.end || payload.end > buf.len() {
            return Err(SealError::OutOfBounds);
        }
        if payload.start < HEADROOM {
            return Err(SealError::NoHeadroom);
        }
        let len = payload.end - payload.start;
        let pad = (4 - (len + TRAILER_LEN) % 4) % 4;
        let plain_end = payload.end + pad + TRAILER_LEN;
        let end = plain_end + ICV_LEN;
        if end > buf.len() {
            return Err(SealError::NoTailroom);
        }
        if self.exhausted() {
            return Err(SealError::Exhausted);
        }
        let seq = self.next_seq;
        self.next_seq += 1;

        let start = payload.start - HEADROOM;
        let spi = self.spi.get();
        buf[start..start + 4].copy_from_slice(&spi.to_be_bytes());
        buf[start + 4..start + 8].copy_from_slice(&(seq as u32).to_be_bytes());
        buf[start + 8..start + 16].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in buf[payload.end..payload.end + pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        buf[payload.end + pad] = pad as u8;
        buf[payload.end + pad + 1] = next_header;

        let (aad, aad_len) = self.mode.aad(spi, seq);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                nonce(&self.keys.salt, seq),
                Aad::from(&aad[..aad_len]),
                &mut buf[payload.start..plain_end],
            )
            // ring fails only for inputs beyond GCM's 2^36-byte limit, impossible for a slice here.
            .map_err(|_| SealError::OutOfBounds)?;
        buf[plain_end..end].copy_from_slice(tag.as_ref());
        Ok(Sealed {
            datagram: start..end,
            seq,
            rekey_due: self.rekey_due(),
        })
    }
}

/// Why `open` rejected a datagram; one variant per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// `datagram` is not inside the buffer.
    #[error("datagram range outside the buffer")]
    OutOfBounds,
    /// Shorter than [`MIN_DATAGRAM_LEN`], or the ciphertext is not a multiple of 4 bytes.
    #[error("bad ESP datagram length")]
    BadLength,
    /// The SPI is not this SA's.
    #[error("SPI does not belong to this SA")]
    WrongSpi,
    /// The sequence number is above the mode's limit ([`SeqMode::reject_after`]).
    #[error("sequence number beyond the SA's limit")]
    SeqLimit,
    /// The anti-replay window refused the sequence number (before or after the AEAD).
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
    /// The ICV did not verify.
    #[error("authentication tag mismatch")]
    BadTag,
    /// The packet authenticated but its IV is not its 64-bit sequence number (docs/protocol.md;
    /// only under [`PeerIv::Sequence`]).
    #[error("IV differs from the sequence number")]
    IvMismatch,
    /// The padding is not 1, 2, 3.. or longer than the plaintext (RFC 4303 §2.4).
    #[error("bad ESP padding")]
    BadPadding,
}

/// An opened datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Where the inner packet now lies (plaintext) in the buffer.
    pub payload: Range<usize>,
    /// The next-header byte (see the `NEXT_HEADER_*` constants).
    pub next_header: u8,
    /// The full sequence number (below 2^32 without ESN).
    pub seq: u64,
}

/// The receiving half of an SA: keys, our SPI, the anti-replay window and how to read datagrams.
pub struct InboundSa {
    spi: Spi,
    keys: SaKeys,
    aead: LessSafeKey,
    window: ReplayWindow,
    seq_mode: SeqMode,
    peer_iv: PeerIv,
}

impl std::fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &self.spi)
            .field("window", &self.window)
            .field("seq_mode", &self.seq_mode)
            .field("peer_iv", &self.peer_iv)
            .finish_non_exhaustive()
    }
}

/// The full sequence number for a received low half, given the window's highest `top`
/// (RFC 4303 Appendix A.2.2, window size [`WINDOW`]).
///
/// The inference uses [`WINDOW`] even for a smaller configured window: a number between the two
/// is then placed in the current block and refused as too old before the AEAD, where the RFC's
/// rule with the smaller W would place it in the next block and spend an AEAD to refuse it. They
/// differ only for a jump forward of more than 2^32 - [`WINDOW`] numbers, which the RFC's rule
/// cannot follow either (it assumes fewer than 2^32 - W lost in a row).
pub fn infer_seq(top: u64, seq_lo: u32) -> u64 {
    let tl = top as u32;
    let th = (top >> 32) as u32;
    let w = WINDOW as u32;
    let bottom = tl.wrapping_sub(w - 1);
    let seq_hi = if tl >= w - 1 {
        // Case A: the window lies within one 2^32 block.
        if seq_lo >= bottom {
            th
        } else {
            th.wrapping_add(1)
        }
    } else if seq_lo >= bottom && th > 0 {
        // Case B: the window spans a block boundary and seq_lo is in the previous block.
        th - 1
    } else {
        th
    };
    (u64::from(seq_hi) << 32) | u64::from(seq_lo)
}

impl InboundSa {
    /// A fresh SA of tandem's own kind ([`InboundParams::default`]) receiving on `spi` (chosen by
    /// us) under `keys`.
    pub fn new(spi: Spi, keys: SaKeys) -> Self {
        Self::with_params(spi, keys, InboundParams::default())
    }

    /// A fresh SA receiving on `spi` under `keys`, reading datagrams as `params` says.
    pub fn with_params(spi: Spi, keys: SaKeys, params: InboundParams) -> Self {
        let aead = aead_key(&keys);
        Self {
            spi,
            keys,
            aead,
            window: ReplayWindow::with_size(params.window),
            seq_mode: params.seq,
            peer_iv: params.peer_iv,
        }
    }

    /// How this SA reads datagrams.
    pub fn params(&self) -> InboundParams {
        InboundParams {
            seq: self.seq_mode,
            window: self.window.size(),
            peer_iv: self.peer_iv,
        }
    }

    /// Our SPI, which the peer writes in every datagram.
    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// The keys (for the debugging key log only).
    pub fn keys(&self) -> &SaKeys {
        &self.keys
    }

    /// The highest authenticated sequence number (0 if none).
    pub fn highest_seq(&self) -> u64 {
        self.window.top()
    }

    /// Decrypts `buf[datagram]` in place; the inner packet is returned as a range of `buf`.
    pub fn open(&mut self, buf: &mut [u8], datagram: Range<usize>) -> Result<Opened, OpenError> {
        if datagram.start > datagram.end || datagram.end > buf.len() {
            return Err(OpenError::OutOfBounds);
        }
        let d = &buf[datagram.clone()];
        let len = d.len();
        if len < MIN_DATAGRAM_LEN || (len - HEADROOM - ICV_LEN) % 4 != 0 {
            return Err(OpenError::BadLength);
        }
        let spi = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        if spi != self.spi.get() {
            return Err(OpenError::WrongSpi);
        }
        let seq_lo = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        let iv = u64::from_be_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
        let seq = self.seq_mode.full_seq(self.window.top(), seq_lo);
        if seq > self.seq_mode.reject_after() {
            return Err(OpenError::SeqLimit);
        }
        self.window.check(seq)?;

        let ct = datagram.start + HEADROOM..datagram.end;
        let (aad, aad_len) = self.seq_mode.aad(spi, seq);
        let plain = self
            .aead
            .open_in_place(
                nonce(&self.keys.salt, iv),
                Aad::from(&aad[..aad_len]),
                &mut buf[ct.clone()],
            )
            .map_err(|_| OpenError::BadTag)?
            .len();
        if self.peer_iv == PeerIv::Sequence && iv != seq {
            return Err(OpenError::IvMismatch);
        }
        let plain_end = ct.start + plain;
        let next_header = buf[plain_end - 1];
        let pad = usize::from(buf[plain_end - 2]);
        if pad + TRAILER_LEN > plain {
            return Err(OpenError::BadPadding);
        }
        let payload_end = plain_end - TRAILER_LEN - pad;
        let pad_ok = buf[payload_end..payload_end + pad]
            .iter()
            .enumerate()
            .all(|(i, &b)| usize::from(b) == i + 1);
        if !pad_ok {
            return Err(OpenError::BadPadding);
        }
        self.window.commit(seq)?;
        Ok(Opened {
            payload: ct.start..payload_end,
            next_header,
            seq,
        })
    }
}
