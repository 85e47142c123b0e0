//! The handshake: `Noise_IKpsk2_25519_AESGCM_SHA256` (Noise rev. 34) with a tunnel-bound
//! prologue (see [`prologue`]: `"tandem v2" || HMAC-SHA256(psk, "tandem v2 tunnel binding")`),
//! framed as tandem handshake messages with WireGuard-style `mac1`/`mac2` and cookie replies.
//! docs/protocol.md describes the whole protocol.
//!
//! ```text
//! IKpsk2:  <- s
//!          ...
//!          -> e, es, s, ss          initiation, payload = sender SPI (4) || TAI64N (12)
//!          <- e, ee, se, psk        response,   payload = sender SPI (4)
//! ```
//!
//! Every handshake message starts with the RFC 3948 non-ESP marker `00 00 00 00`, a type byte
//! (1 initiation, 2 response, 3 cookie reply) and 3 reserved zero bytes ([`HEADER_LEN`] = 8).
//! Initiation and response end with `mac1 (16) || mac2 (16)`:
//! - `mac1 = HMAC-SHA256(SHA-256("mac1----" || receiver static public), message up to mac1)[..16]`
//!   — checked before any DH, so junk from someone who does not know our public key costs one HMAC;
//! - `mac2 = HMAC-SHA256(cookie, message up to mac2)[..16]`, all-zero when no cookie is held. A
//!   responder "under load" answers an initiation without a valid `mac2` with a cookie reply.
//! - cookie = `HMAC-SHA256(secret, source IP || source port)[..16]`, the secret redrawn from the
//!   RNG every [`COOKIE_SECRET_LIFETIME`]; the cookie reply carries it encrypted with AES-256-GCM
//!   under `SHA-256("cookie--" || responder static public)`, a random 12-byte nonce, AAD = the
//!   `mac1` of the initiation it answers.
//!
//! Key schedule: the Noise split gives `k1` (initiator -> responder) and `k2` (responder ->
//! initiator). Each SA direction takes 36 bytes = AES-256 key (32) || GCM salt (4) from
//! `HKDF-SHA256(salt = "", IKM = k, info = label)` with the labels [`LABEL_I2R`] and
//! [`LABEL_R2I`]. The initiator's inbound SA has the SPI it sent; its outbound SA the SPI the
//! responder sent, and the reverse on the responder.
//!
//! Order of checks on the responder: length/type -> mac1 -> (under load) mac2 -> DH(es) ->
//! decrypt static (fails unless the initiator used this tunnel's PSK: it is in the prologue) ->
//! static == configured peer -> DH(ss, precomputed) -> decrypt payload -> SPI valid -> timestamp
//! strictly newer than the last *confirmed* one -> write response. Nothing changes state here:
//! the caller holds the SAs unconfirmed and calls [`Responder::confirm`] with the timestamp once
//! the initiator has proven it holds the keys (its first packet on the new inbound SA).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::esp::{AES_KEY_LEN, InboundSa, OutboundSa, SALT_LEN, SaKeys};
use crate::keys::{KEY_LEN, Psk, PublicKey, Spi, StaticSecret, Tai64N};
use crate::noise::{self, SymmetricState, TAG_LEN};
pub use crate::noise::{PROLOGUE_LEN, prologue};

/// Marker (4) + type (1) + reserved (3).
pub const HEADER_LEN: usize = 8;
/// The RFC 3948 non-ESP marker: an SPI of zero.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// Length of `mac1` and of `mac2`.
pub const MAC_LEN: usize = 16;
/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;

const E_OFF: usize = HEADER_LEN;
const INIT_S_OFF: usize = E_OFF + KEY_LEN;
const INIT_S_LEN: usize = KEY_LEN + TAG_LEN;
const INIT_PAYLOAD_OFF: usize = INIT_S_OFF + INIT_S_LEN;
/// Initiation payload: sender SPI (4) || TAI64N (12).
const INIT_PAYLOAD_LEN: usize = 4 + Tai64N::LEN;
const INIT_MAC1_OFF: usize = INIT_PAYLOAD_OFF + INIT_PAYLOAD_LEN + TAG_LEN;
const INIT_MAC2_OFF: usize = INIT_MAC1_OFF + MAC_LEN;
/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = INIT_MAC2_OFF + MAC_LEN;

const RESP_PAYLOAD_OFF: usize = E_OFF + KEY_LEN;
/// Response payload: sender SPI (4).
const RESP_PAYLOAD_LEN: usize = 4;
const RESP_MAC1_OFF: usize = RESP_PAYLOAD_OFF + RESP_PAYLOAD_LEN + TAG_LEN;
const RESP_MAC2_OFF: usize = RESP_MAC1_OFF + MAC_LEN;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = RESP_MAC2_OFF + MAC_LEN;

const COOKIE_NONCE_OFF: usize = HEADER_LEN;
const COOKIE_NONCE_LEN: usize = 12;
const COOKIE_CT_OFF: usize = COOKIE_NONCE_OFF + COOKIE_NONCE_LEN;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = COOKIE_CT_OFF + COOKIE_LEN + TAG_LEN;
// A cookie reply answers an initiation from an unverified source: it must never be bigger than
// what the sender sent, or the responder would amplify a spoofed flood.
const _: () = assert!(COOKIE_REPLY_LEN < INITIATION_LEN);
/// The longest handshake message: size buffers for handshake output with this.
pub const MAX_MESSAGE_LEN: usize = INITIATION_LEN;

/// How long a responder keeps one cookie secret, and so how long a cookie is good for
/// (WireGuard's 120 s, whitepaper §5.4.7).
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// HKDF info label for the initiator -> responder SA.
pub const LABEL_I2R: &[u8] = b"tandem v2 esp initiator to responder";
/// HKDF info label for the responder -> initiator SA.
pub const LABEL_R2I: &[u8] = b"tandem v2 esp responder to initiator";

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// Handshake message types (the byte after the non-ESP marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Handshake initiation.
    Initiation = 1,
    /// Handshake response.
    Response = 2,
    /// Cookie reply.
    CookieReply = 3,
}

/// The handshake message type of a datagram, if it starts with the non-ESP marker and a known
/// type byte (no other validation).
pub fn message_type(datagram: &[u8]) -> Option<MessageType> {
    if datagram.len() < HEADER_LEN || datagram[..4] != NON_ESP_MARKER {
        return None;
    }
    match datagram[4] {
        1 => Some(MessageType::Initiation),
        2 => Some(MessageType::Response),
        3 => Some(MessageType::CookieReply),
        _ => None,
    }
}

/// Why a handshake message was rejected or could not be written; one variant per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The output buffer is shorter than the message to write.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The message does not start with the non-ESP marker.
    #[error("not a handshake message")]
    NotControl,
    /// The type byte is not the one this call handles.
    #[error("unexpected handshake message type")]
    WrongType,
    /// The message has the wrong length for its type (e.g. truncated).
    #[error("bad message length")]
    BadLength,
    /// The reserved header bytes are not zero.
    #[error("reserved bytes not zero")]
    ReservedNotZero,
    /// `mac1` does not verify: not addressed to our static key, or damaged.
    #[error("bad mac1")]
    BadMac1,
    /// A DH gave the all-zero result: a low-order (or otherwise invalid) public key.
    #[error("low-order public key")]
    LowOrderPoint,
    /// The encrypted static key of an initiation does not authenticate (tampered, or the
    /// initiator used another responder key).
    #[error("initiation static key does not authenticate")]
    StaticAuthFailed,
    /// The initiation authenticated a static key that is not this tunnel's peer.
    #[error("initiation from an unexpected static key")]
    UnexpectedPeer,
    /// The initiation payload does not authenticate.
    #[error("initiation payload does not authenticate")]
    PayloadAuthFailed,
    /// The initiation's timestamp is not newer than the last accepted one (a replay).
    #[error("initiation timestamp not newer than the last accepted one")]
    StaleTimestamp,
    /// The response payload does not authenticate: wrong PSK, wrong static key, or tampered.
    #[error("response does not authenticate")]
    ResponseAuthFailed,
    /// The SPI announced by the peer is below 256.
    #[error("invalid SPI announced")]
    InvalidSpi,
    /// The cookie reply does not decrypt for our last initiation.
    #[error("cookie reply does not authenticate")]
    CookieReplyAuthFailed,
    /// The initiator already completed (a second response).
    #[error("initiator is not awaiting a response")]
    NotAwaitingResponse,
}

fn mac1_key(receiver: &PublicKey) -> [u8; 32] {
    noise::hash(&[LABEL_MAC1, receiver.as_bytes()])
}

fn cookie_key(responder: &PublicKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(noise::hash(&[LABEL_COOKIE, responder.as_bytes()]))
}

fn mac(key: &[u8], msg: &[u8]) -> [u8; MAC_LEN] {
    let full = noise::hmac(key, &[msg]);
    let mut m = [0u8; MAC_LEN];
    m.copy_from_slice(&full[..MAC_LEN]);
    m
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn check_header(msg: &[u8], ty: MessageType, len: usize) -> Result<(), HandshakeError> {
    if msg.len() < HEADER_LEN {
        return Err(HandshakeError::BadLength);
    }
    if msg[..4] != NON_ESP_MARKER {
        return Err(HandshakeError::NotControl);
    }
    if msg[4] != ty as u8 {
        return Err(HandshakeError::WrongType);
    }
    if msg.len() != len {
        return Err(HandshakeError::BadLength);
    }
    if msg[5..HEADER_LEN] != [0, 0, 0] {
        return Err(HandshakeError::ReservedNotZero);
    }
    Ok(())
}

fn write_header(out: &mut [u8], ty: MessageType) {
    out[..4].copy_from_slice(&NON_ESP_MARKER);
    out[4] = ty as u8;
    out[5..HEADER_LEN].fill(0);
}

/// A cookie received in a cookie reply; attach it to the next initiation (as `mac2`) while it is
/// fresh. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Cookie {
    bytes: [u8; COOKIE_LEN],
    #[zeroize(skip)]
    received: Instant,
}

impl Cookie {
    /// When the cookie reply arrived.
    pub fn received(&self) -> Instant {
        self.received
    }

    /// Whether the responder has (at the latest) replaced the secret behind this cookie.
    pub fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.received) >= COOKIE_SECRET_LIFETIME
    }
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cookie")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// The two Noise split keys (k1 initiator -> responder, k2 responder -> initiator); zeroized on
/// drop. Exposed for the interop tests and the key schedule; the SAs are already built from it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct NoiseSplit {
    /// k1: initiator -> responder.
    pub initiator_to_responder: [u8; 32],
    /// k2: responder -> initiator.
    pub responder_to_initiator: [u8; 32],
}

impl std::fmt::Debug for NoiseSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseSplit(..)")
    }
}

/// The SA keys per direction from the Noise split: (initiator -> responder, responder ->
/// initiator), with [`LABEL_I2R`] / [`LABEL_R2I`].
pub fn derive_sa_keys(split: &NoiseSplit) -> (SaKeys, SaKeys) {
    (
        expand(&split.initiator_to_responder, LABEL_I2R),
        expand(&split.responder_to_initiator, LABEL_R2I),
    )
}

fn expand(ikm: &[u8; 32], label: &[u8]) -> SaKeys {
    let hk = Hkdf::<Sha256>::new(None, ikm);
    let mut okm = Zeroizing::new([0u8; AES_KEY_LEN + SALT_LEN]);
    // 36 bytes are far below HKDF-SHA256's 255 * 32 limit.
    #[allow(clippy::expect_used)]
    hk.expand(label, &mut okm[..])
        .expect("36 bytes is a valid HKDF-SHA256 output length");
    let mut keys = SaKeys {
        key: [0; AES_KEY_LEN],
        salt: [0; SALT_LEN],
    };
    keys.key.copy_from_slice(&okm[..AES_KEY_LEN]);
    keys.salt.copy_from_slice(&okm[AES_KEY_LEN..]);
    keys
}

/// Which end of the handshake we were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the initiation.
    Initiator,
    /// We answered it.
    Responder,
}

/// A completed handshake: both SAs, ready to use.
#[derive(Debug)]
pub struct Established {
    /// Which end we were.
    pub role: Role,
    /// Our SPI: the peer writes it in the datagrams it sends us (the inbound SA's).
    pub local_spi: Spi,
    /// The peer's SPI: we write it in the datagrams we send (the outbound SA's).
    pub remote_spi: Spi,
    /// Opens the peer's datagrams.
    pub inbound: InboundSa,
    /// Seals ours.
    pub outbound: OutboundSa,
    /// The Noise handshake hash `h` (public; identifies the session, e.g. in logs).
    pub handshake_hash: [u8; 32],
    /// On the responder: the initiation's timestamp. On the initiator: the one we sent.
    pub timestamp: Tai64N,
    /// The raw Noise split (for the key schedule tests; the SAs already hold the derived keys).
    pub split: NoiseSplit,
}

fn establish(
    role: Role,
    sym: &SymmetricState,
    local_spi: Spi,
    remote_spi: Spi,
    timestamp: Tai64N,
) -> Established {
    let (k1, k2) = sym.split();
    let split = NoiseSplit {
        initiator_to_responder: *k1,
        responder_to_initiator: *k2,
    };
    let (i2r, r2i) = derive_sa_keys(&split);
    let (inbound_keys, outbound_keys) = match role {
        Role::Initiator => (r2i, i2r),
        Role::Responder => (i2r, r2i),
    };
    Established {
        role,
        local_spi,
        remote_spi,
        inbound: InboundSa::new(local_spi, inbound_keys),
        outbound: OutboundSa::new(remote_spi, outbound_keys),
        handshake_hash: sym.h(),
        timestamp,
        split,
    }
}

fn parse_spi(b: &[u8]) -> Result<Spi, HandshakeError> {
    let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Spi::new(v).ok_or(HandshakeError::InvalidSpi)
}

/// What the initiator keeps between sending the initiation and reading the response.
struct Pending {
    sym: SymmetricState,
    ephemeral: StaticSecret,
    local: StaticSecret,
    psk: Psk,
}

/// The initiator's state machine.
enum InitiatorState {
    /// Initiation sent; a response (or a cookie reply) may come.
    AwaitingResponse(Box<Pending>),
    /// A response was accepted; the initiator is spent.
    Done,
}

/// The initiator side of one handshake: created by [`Initiator::start`], which writes the
/// initiation; completed by [`Initiator::consume_response`].
pub struct Initiator {
    state: InitiatorState,
    local_spi: Spi,
    peer: PublicKey,
    timestamp: Tai64N,
    /// mac1 of the initiation we sent: the AAD of a cookie reply to it.
    sent_mac1: [u8; MAC_LEN],
    /// mac1 key for responses (keyed by our own static public).
    own_mac1_key: [u8; 32],
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            InitiatorState::AwaitingResponse(_) => "awaiting-response",
            InitiatorState::Done => "done",
        };
        f.debug_struct("Initiator")
            .field("state", &state)
            .field("local_spi", &self.local_spi)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Writes a handshake initiation into `out` (at least [`INITIATION_LEN`] bytes) and returns
    /// the initiator with the number of bytes written. `local_spi` is the SPI the peer shall use
    /// towards us; `timestamp` must grow from one initiation to the next (TAI64N of wall time);
    /// `cookie` is the latest fresh cookie from this responder, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn start<R: CryptoRng + ?Sized>(
        local: &StaticSecret,
        peer: &PublicKey,
        psk: &Psk,
        local_spi: Spi,
        timestamp: Tai64N,
        cookie: Option<&Cookie>,
        rng: &mut R,
        out: &mut [u8],
    ) -> Result<(Initiator, usize), HandshakeError> {
        if out.len() < INITIATION_LEN {
            return Err(HandshakeError::BufferTooSmall);
        }
        let out = &mut out[..INITIATION_LEN];
        let mut sym = SymmetricState::new(&noise::prologue(psk.as_bytes()), peer.as_bytes());
        let ephemeral = StaticSecret::generate(rng);
        write_header(out, MessageType::Initiation);

        // -> e (with PSK, e also feeds MixKey: Noise §9.2)
        let e_pub = ephemeral.public_key();
        out[E_OFF..INIT_S_OFF].copy_from_slice(e_pub.as_bytes());
        sym.mix_hash(e_pub.as_bytes());
        sym.mix_key(e_pub.as_bytes());
        // es
        let es = ephemeral
            .diffie_hellman(peer)
            .ok_or(HandshakeError::LowOrderPoint)?;
        sym.mix_key(&es[..]);
        // s
        let s_field = &mut out[INIT_S_OFF..INIT_PAYLOAD_OFF];
        s_field[..KEY_LEN].copy_from_slice(local.public_key().as_bytes());
        sym.encrypt_and_hash(s_field);
        // ss
        let ss = local
            .diffie_hellman(peer)
            .ok_or(HandshakeError::LowOrderPoint)?;
        sym.mix_key(&ss[..]);
        // payload: SPI || TAI64N
        let p = &mut out[INIT_PAYLOAD_OFF..INIT_MAC1_OFF];
        p[..4].copy_from_slice(&local_spi.get().to_be_bytes());
        p[4..INIT_PAYLOAD_LEN].copy_from_slice(&timestamp.to_bytes());
        sym.encrypt_and_hash(p);

        let mac1 = mac(&mac1_key(peer), &out[..INIT_MAC1_OFF]);
        out[INIT_MAC1_OFF..INIT_MAC2_OFF].copy_from_slice(&mac1);
        let mac2 = match cookie {
            Some(c) => mac(&c.bytes, &out[..INIT_MAC2_OFF]),
            None => [0; MAC_LEN],
        };
        out[INIT_MAC2_OFF..].copy_from_slice(&mac2);

        let initiator = Initiator {
            state: InitiatorState::AwaitingResponse(Box::new(Pending {
                sym,
                ephemeral,
                local: local.clone(),
                psk: psk.clone(),
            })),
            local_spi,
            peer: *peer,
            timestamp,
            sent_mac1: mac1,
            own_mac1_key: mac1_key(&local.public_key()),
        };
        Ok((initiator, INITIATION_LEN))
    }

    /// The SPI we announced.
    pub fn local_spi(&self) -> Spi {
        self.local_spi
    }

    /// The timestamp we sent.
    pub fn timestamp(&self) -> Tai64N {
        self.timestamp
    }

    /// Whether a response can still complete this initiator.
    pub fn is_awaiting_response(&self) -> bool {
        matches!(self.state, InitiatorState::AwaitingResponse(_))
    }

    /// Processes a handshake response. On success the initiator is spent (a second response gets
    /// [`HandshakeError::NotAwaitingResponse`]); on failure it stays as it was, so a forged
    /// response cannot kill a pending handshake.
    pub fn consume_response(&mut self, msg: &[u8]) -> Result<Established, HandshakeError> {
        let InitiatorState::AwaitingResponse(pending) = &self.state else {
            return Err(HandshakeError::NotAwaitingResponse);
        };
        check_header(msg, MessageType::Response, RESPONSE_LEN)?;
        let mac1 = mac(&self.own_mac1_key, &msg[..RESP_MAC1_OFF]);
        if !ct_eq(&mac1, &msg[RESP_MAC1_OFF..RESP_MAC2_OFF]) {
            return Err(HandshakeError::BadMac1);
        }
        let mut sym = pending.sym.clone();
        let mut re = [0u8; KEY_LEN];
        re.copy_from_slice(&msg[E_OFF..RESP_PAYLOAD_OFF]);
        let re = PublicKey(re);
        // <- e
        sym.mix_hash(re.as_bytes());
        sym.mix_key(re.as_bytes());
        // ee
        let ee = pending
            .ephemeral
            .diffie_hellman(&re)
            .ok_or(HandshakeError::LowOrderPoint)?;
        sym.mix_key(&ee[..]);
        // se
        let se = pending
            .local
            .diffie_hellman(&re)
            .ok_or(HandshakeError::LowOrderPoint)?;
        sym.mix_key(&se[..]);
        // psk
        sym.mix_key_and_hash(pending.psk.as_bytes());
        let mut payload = [0u8; RESP_PAYLOAD_LEN + TAG_LEN];
        payload.copy_from_slice(&msg[RESP_PAYLOAD_OFF..RESP_MAC1_OFF]);
        if !sym.decrypt_and_hash(&mut payload) {
            return Err(HandshakeError::ResponseAuthFailed);
        }
        let remote_spi = parse_spi(&payload)?;
        let est = establish(
            Role::Initiator,
            &sym,
            self.local_spi,
            remote_spi,
            self.timestamp,
        );
        self.state = InitiatorState::Done;
        Ok(est)
    }

    /// Processes a cookie reply to our initiation; the cookie goes into the next
    /// [`Initiator::start`] (the responder drops initiations without it while under load).
    pub fn consume_cookie_reply(&self, msg: &[u8], now: Instant) -> Result<Cookie, HandshakeError> {
        check_header(msg, MessageType::CookieReply, COOKIE_REPLY_LEN)?;
        let key = cookie_key(&self.peer);
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        nonce.copy_from_slice(&msg[COOKIE_NONCE_OFF..COOKIE_CT_OFF]);
        let mut ct = [0u8; COOKIE_LEN + TAG_LEN];
        ct.copy_from_slice(&msg[COOKIE_CT_OFF..]);
        if !cookie_aead_open(&key, nonce, &self.sent_mac1, &mut ct) {
            return Err(HandshakeError::CookieReplyAuthFailed);
        }
        let mut bytes = [0u8; COOKIE_LEN];
        bytes.copy_from_slice(&ct[..COOKIE_LEN]);
        ct.zeroize();
        Ok(Cookie {
            bytes,
            received: now,
        })
    }
}

fn cookie_aead_open(key: &[u8; 32], nonce: [u8; 12], ad: &[u8], in_out: &mut [u8]) -> bool {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    #[allow(clippy::expect_used)]
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    k.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(ad), in_out)
        .is_ok()
}

fn cookie_aead_seal(key: &[u8; 32], nonce: [u8; 12], ad: &[u8], in_out: &mut [u8]) {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let (msg, tag_room) = in_out.split_at_mut(in_out.len() - TAG_LEN);
    #[allow(clippy::expect_used)]
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    #[allow(clippy::expect_used)]
    let tag = k
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(ad), msg)
        .expect("16 bytes are within GCM limits");
    tag_room.copy_from_slice(tag.as_ref());
}

/// An initiation whose framing and `mac1` verified: what every tunnel behind one static key
/// checks alike, before any DH.
#[derive(Debug)]
pub struct CheckedInitiation {
    mac1: [u8; MAC_LEN],
}

impl CheckedInitiation {
    /// Checks the header, the length and `mac1` (keyed by our own static public key:
    /// [`mac1_key_for`]).
    pub fn check(own_mac1_key: &[u8; 32], msg: &[u8]) -> Result<Self, HandshakeError> {
        check_header(msg, MessageType::Initiation, INITIATION_LEN)?;
        let mac1 = mac(own_mac1_key, &msg[..INIT_MAC1_OFF]);
        if !ct_eq(&mac1, &msg[INIT_MAC1_OFF..INIT_MAC2_OFF]) {
            return Err(HandshakeError::BadMac1);
        }
        Ok(Self { mac1 })
    }

    /// The DH `es` of `msg` (the message [`CheckedInitiation::check`] checked) with our static
    /// key: the one DH every candidate tunnel shares.
    pub fn dh(
        &self,
        local: &StaticSecret,
        msg: &[u8],
    ) -> Result<InitiationPreamble, HandshakeError> {
        let mut re = [0u8; KEY_LEN];
        re.copy_from_slice(&msg[E_OFF..INIT_S_OFF]);
        let re = PublicKey(re);
        // `-> e, es` into the chaining key and cipher key; `h` is left for each candidate to
        // compute from its own prologue (see `Responder::claims`), so it is not kept here.
        let mut sym = SymmetricState::new(&[0; PROLOGUE_LEN], &[0; KEY_LEN]);
        sym.mix_key(re.as_bytes());
        let es = local
            .diffie_hellman(&re)
            .ok_or(HandshakeError::LowOrderPoint)?;
        sym.mix_key(&es[..]);
        Ok(InitiationPreamble { re, sym })
    }
}

/// An initiation after the shared DH `es`: the chaining key and cipher key do not depend on the
/// tunnel (only `h` does, through the prologue), so one DH serves every candidate tunnel.
pub struct InitiationPreamble {
    re: PublicKey,
    sym: SymmetricState,
}

impl std::fmt::Debug for InitiationPreamble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiationPreamble").finish_non_exhaustive()
    }
}

/// The `mac1` key of messages addressed to the holder of `public`.
pub fn mac1_key_for(public: &PublicKey) -> [u8; 32] {
    mac1_key(public)
}

/// A responder's cookie state: the key its cookie replies are encrypted under and the secret
/// behind the cookies, redrawn every [`COOKIE_SECRET_LIFETIME`]. One per responder, or one per
/// socket when many tunnels share it.
#[derive(Clone)]
pub struct CookieJar {
    key: Zeroizing<[u8; 32]>,
    secret: Option<(Zeroizing<[u8; 32]>, Instant)>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar").finish_non_exhaustive()
    }
}

impl CookieJar {
    /// Cookie replies of the holder of `local` (their key is derived from it).
    pub fn new(local: &PublicKey) -> Self {
        CookieJar {
            key: cookie_key(local),
            secret: None,
        }
    }

    fn cookie_for<R: CryptoRng + ?Sized>(
        &mut self,
        src: SocketAddr,
        now: Instant,
        rng: &mut R,
    ) -> [u8; COOKIE_LEN] {
        let secret = match &mut self.secret {
            Some((s, born)) if now.saturating_duration_since(*born) < COOKIE_SECRET_LIFETIME => {
                s.clone()
            }
            slot => {
                let mut s = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(&mut s[..]);
                *slot = Some((s.clone(), now));
                s
            }
        };
        let port = src.port().to_be_bytes();
        let full = match src.ip() {
            IpAddr::V4(ip) => noise::hmac(&secret[..], &[&ip.octets(), &port]),
            IpAddr::V6(ip) => noise::hmac(&secret[..], &[&ip.octets(), &port]),
        };
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&full[..COOKIE_LEN]);
        c
    }

    /// Under load: unless the initiation carries a valid `mac2` for its source, writes a cookie
    /// reply into `out` and returns its length; `None` when `mac2` is valid (go on with the DH).
    pub fn reply_unless_mac2<R: CryptoRng + ?Sized>(
        &mut self,
        checked: &CheckedInitiation,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        rng: &mut R,
        out: &mut [u8],
    ) -> Result<Option<usize>, HandshakeError> {
        let cookie = self.cookie_for(src, now, rng);
        let mac2 = mac(&cookie, &msg[..INIT_MAC2_OFF]);
        if ct_eq(&mac2, &msg[INIT_MAC2_OFF..]) {
            return Ok(None);
        }
        if out.len() < COOKIE_REPLY_LEN {
            return Err(HandshakeError::BufferTooSmall);
        }
        let out = &mut out[..COOKIE_REPLY_LEN];
        write_header(out, MessageType::CookieReply);
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        out[COOKIE_NONCE_OFF..COOKIE_CT_OFF].copy_from_slice(&nonce);
        out[COOKIE_CT_OFF..COOKIE_CT_OFF + COOKIE_LEN].copy_from_slice(&cookie);
        cookie_aead_seal(&self.key, nonce, &checked.mac1, &mut out[COOKIE_CT_OFF..]);
        Ok(Some(COOKIE_REPLY_LEN))
    }
}

/// What the responder did with an initiation.
#[derive(Debug)]
pub enum ResponderOutcome {
    /// The initiation authenticated: the response is in `out[..response_len]`, send it. The SAs
    /// are *unconfirmed*: the inbound SA may receive at once, but the caller commits nothing
    /// (timestamp, endpoint, liveness, outbound SA) until the first packet opens on it, then
    /// calls [`Responder::confirm`].
    Established {
        /// The new SAs.
        established: Box<Established>,
        /// Bytes of the response written into `out`.
        response_len: usize,
    },
    /// Under load and no valid `mac2`: a cookie reply is in `out[..len]`, send it to the source;
    /// no state changed.
    CookieReply {
        /// Bytes of the cookie reply written into `out`.
        len: usize,
    },
}

/// The responder side of one tunnel: our static key, the expected peer's public key, the
/// tunnel's PSK, the last accepted timestamp and the cookie secret.
#[derive(Clone)]
pub struct Responder {
    local: StaticSecret,
    peer: PublicKey,
    psk: Psk,
    /// DH(our static, peer static): fixed per tunnel, so computed once.
    ss: Zeroizing<[u8; KEY_LEN]>,
    /// mac1 key of messages to us.
    own_mac1_key: [u8; 32],
    /// mac1 key of messages to the peer.
    peer_mac1_key: [u8; 32],
    /// Encrypts our cookie replies, and keeps their secret.
    cookies: CookieJar,
    /// The handshake hash after the prologue and our static key: the per-tunnel start of `h`.
    h0: [u8; 32],
    last_timestamp: Option<Tai64N>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("psk", &self.psk)
            .field("last_timestamp", &self.last_timestamp)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder for one tunnel. Fails with [`HandshakeError::LowOrderPoint`] if the peer's
    /// public key is low-order (no handshake could ever authenticate it).
    pub fn new(local: &StaticSecret, peer: PublicKey, psk: &Psk) -> Result<Self, HandshakeError> {
        let ss = local
            .diffie_hellman(&peer)
            .ok_or(HandshakeError::LowOrderPoint)?;
        Ok(Self {
            own_mac1_key: mac1_key(&local.public_key()),
            peer_mac1_key: mac1_key(&peer),
            cookies: CookieJar::new(&local.public_key()),
            h0: SymmetricState::new(&prologue(psk.as_bytes()), local.public_key().as_bytes()).h(),
            local: local.clone(),
            peer,
            psk: psk.clone(),
            ss,
            last_timestamp: None,
        })
    }

    /// The configured peer.
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// The timestamp of the last *confirmed* initiation: the replay high-water mark.
    pub fn last_timestamp(&self) -> Option<Tai64N> {
        self.last_timestamp
    }

    /// Key confirmation: the initiator of the handshake that carried `timestamp` has proven it
    /// holds the new keys (its first authenticated packet on the new inbound SA arrived). Only now
    /// does the timestamp become the replay high-water mark; an initiation that is never
    /// confirmed (a replay, or one whose response was lost) changes nothing. Never moves the mark
    /// backwards.
    pub fn confirm(&mut self, timestamp: Tai64N) {
        if self.last_timestamp.is_none_or(|last| timestamp > last) {
            self.last_timestamp = Some(timestamp);
        }
    }

    /// Handles an initiation from `src`. `under_load` is the engine's judgement (e.g. handshakes
    /// per second above a threshold); `local_spi` is the SPI we announce in the response;
    /// `now` drives the cookie secret rotation; `out` receives the response or cookie reply
    /// (at least [`MAX_MESSAGE_LEN`] bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_initiation<R: CryptoRng + ?Sized>(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        under_load: bool,
        local_spi: Spi,
        now: Instant,
        rng: &mut R,
        out: &mut [u8],
    ) -> Result<ResponderOutcome, HandshakeError> {
        let checked = CheckedInitiation::check(&self.own_mac1_key, msg)?;
        if under_load
            && let Some(len) = self
                .cookies
                .reply_unless_mac2(&checked, msg, src, now, rng, out)?
        {
            return Ok(ResponderOutcome::CookieReply { len });
        }
        let pre = checked.dh(&self.local, msg)?;
        if !self.claims(&pre, msg) {
            return Err(HandshakeError::StaticAuthFailed);
        }
        self.answer(&pre, msg, local_spi, rng, out)
    }

    /// Whether an initiation that passed the shared checks is for this tunnel: its static key
    /// decrypts under this tunnel's prologue (so, its PSK). One hash and one 48-byte AEAD, no
    /// DH: a responder shared by many tunnels tries its candidates with this.
    pub fn claims(&self, pre: &InitiationPreamble, msg: &[u8]) -> bool {
        let mut sym = pre.sym.with_h(noise::hash(&[&self.h0, pre.re.as_bytes()]));
        let mut s = [0u8; INIT_S_LEN];
        s.copy_from_slice(&msg[INIT_S_OFF..INIT_PAYLOAD_OFF]);
        sym.decrypt_and_hash(&mut s)
    }

    /// The rest of an initiation that [`Responder::claims`]: the static key must be this
    /// tunnel's peer, `ss`, the payload, the timestamp; then the response is written into `out`.
    /// Commits nothing (see [`Responder::confirm`]).
    pub fn answer<R: CryptoRng + ?Sized>(
        &mut self,
        pre: &InitiationPreamble,
        msg: &[u8],
        local_spi: Spi,
        rng: &mut R,
        out: &mut [u8],
    ) -> Result<ResponderOutcome, HandshakeError> {
        if out.len() < RESPONSE_LEN {
            return Err(HandshakeError::BufferTooSmall);
        }
        let re = pre.re;
        let mut sym = pre.sym.with_h(noise::hash(&[&self.h0, re.as_bytes()]));
        // s
        let mut s = [0u8; INIT_S_LEN];
        s.copy_from_slice(&msg[INIT_S_OFF..INIT_PAYLOAD_OFF]);
        if !sym.decrypt_and_hash(&mut s) {
            return Err(HandshakeError::StaticAuthFailed);
        }
        if !ct_eq(&s[..KEY_LEN], self.peer.as_bytes()) {
            return Err(HandshakeError::UnexpectedPeer);
        }
        // ss
        sym.mix_key(&self.ss[..]);
        // payload
        let mut p = Zeroizing::new([0u8; INIT_PAYLOAD_LEN + TAG_LEN]);
        p.copy_from_slice(&msg[INIT_PAYLOAD_OFF..INIT_MAC1_OFF]);
        if !sym.decrypt_and_hash(&mut p[..]) {
            return Err(HandshakeError::PayloadAuthFailed);
        }
        let remote_spi = parse_spi(&p[..4])?;
        let mut ts = [0u8; Tai64N::LEN];
        ts.copy_from_slice(&p[4..INIT_PAYLOAD_LEN]);
        let timestamp = Tai64N(ts);
        if self.last_timestamp.is_some_and(|last| timestamp <= last) {
            return Err(HandshakeError::StaleTimestamp);
        }

        // <- e, ee, se, psk
        let out = &mut out[..RESPONSE_LEN];
        write_header(out, MessageType::Response);
        let ephemeral = StaticSecret::generate(rng);
        let e_pub = ephemeral.public_key();
        out[E_OFF..RESP_PAYLOAD_OFF].copy_from_slice(e_pub.as_bytes());
        sym.mix_hash(e_pub.as_bytes());
        sym.mix_key(e_pub.as_bytes());
        let ee = ephemeral
            .diffie_hellman(&re)
            .ok_or(HandshakeError::LowOrderPoint)?;
        sym.mix_key(&ee[..]);
        let se = ephemeral
            .diffie_hellman(&self.peer)
            .ok_or(HandshakeError::LowOrderPoint)?;
        sym.mix_key(&se[..]);
        sym.mix_key_and_hash(self.psk.as_bytes());
        let payload = &mut out[RESP_PAYLOAD_OFF..RESP_MAC1_OFF];
        payload[..4].copy_from_slice(&local_spi.get().to_be_bytes());
        sym.encrypt_and_hash(payload);
        let mac1 = mac(&self.peer_mac1_key, &out[..RESP_MAC1_OFF]);
        out[RESP_MAC1_OFF..RESP_MAC2_OFF].copy_from_slice(&mac1);
        out[RESP_MAC2_OFF..].fill(0);

        // Nothing is committed here: the timestamp becomes the high-water mark only on key
        // confirmation (`confirm`), so a replayed or withheld initiation cannot move it.
        let established = establish(Role::Responder, &sym, local_spi, remote_spi, timestamp);
        Ok(ResponderOutcome::Established {
            established: Box::new(established),
            response_len: RESPONSE_LEN,
        })
    }
}
