//! The IKEv2 message codec (RFC 7296 §3): the IKE header, the generic payload chain and the
//! payloads tandem reads and writes, parsed into owned values and built back to bytes.
//!
//! Invariants:
//! - [`Message::parse`] never panics: every length is checked against what is left before it is
//!   used, and every failure is a [`ParseError`] that names the field.
//! - [`Message::to_bytes`] writes what [`Message::parse`] reads: the next-payload fields, the
//!   payload lengths and the header length are computed, never taken from the values, so a built
//!   message is always self-consistent (the property tests check the round trip).
//! - The Encrypted payload (SK, §3.14) is the last one of a message; [`Message::parse`] leaves
//!   its body (IV, ciphertext, ICV) as bytes: [`open_sk`] authenticates and decrypts it with the
//!   peer's SK_e key, [`seal_message`] builds a whole encrypted message (AES-GCM-16, RFC 5282).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tandem_crypto::SaKeys;

/// Length of the IKE header (§3.1).
pub const HEADER_LEN: usize = 28;
/// Length of the generic payload header (§3.2).
pub const GENERIC_HEADER_LEN: usize = 4;
/// Major version 2, minor version 0 (§3.1).
pub const IKE_VERSION: u8 = 0x20;
/// Explicit IV of the Encrypted payload with AES-GCM (RFC 5282 §3.1).
pub const SK_IV_LEN: usize = 8;
/// ICV of AES-GCM-16 (RFC 5282 §3.1: the 16-octet variant).
pub const SK_ICV_LEN: usize = 16;
/// The largest message we build or accept: the length field is 32 bits, but nothing tandem sends
/// comes near 64 KiB, and a UDP datagram cannot exceed it.
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Header flag: set in every message sent by the original initiator of the IKE SA (§3.1).
pub const FLAG_INITIATOR: u8 = 0x08;
/// Header flag: the sender can speak a higher major version (§3.1); we never set it.
pub const FLAG_VERSION: u8 = 0x10;
/// Header flag: this message is a response (§3.1).
pub const FLAG_RESPONSE: u8 = 0x20;

/// Exchange types (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExchangeType {
    /// IKE_SA_INIT.
    IkeSaInit = 34,
    /// IKE_AUTH.
    IkeAuth = 35,
    /// CREATE_CHILD_SA.
    CreateChildSa = 36,
    /// INFORMATIONAL.
    Informational = 37,
}

impl ExchangeType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            34 => Self::IkeSaInit,
            35 => Self::IkeAuth,
            36 => Self::CreateChildSa,
            37 => Self::Informational,
            _ => return None,
        })
    }
}

/// Payload type numbers (§3.2).
pub mod payload_type {
    /// No next payload.
    pub const NONE: u8 = 0;
    /// Security Association.
    pub const SA: u8 = 33;
    /// Key Exchange.
    pub const KE: u8 = 34;
    /// Identification - Initiator.
    pub const IDI: u8 = 35;
    /// Identification - Responder.
    pub const IDR: u8 = 36;
    /// Authentication.
    pub const AUTH: u8 = 39;
    /// Nonce (Ni, Nr).
    pub const NONCE: u8 = 40;
    /// Notify.
    pub const NOTIFY: u8 = 41;
    /// Delete.
    pub const DELETE: u8 = 42;
    /// Vendor ID.
    pub const VENDOR: u8 = 43;
    /// Traffic Selector - Initiator.
    pub const TSI: u8 = 44;
    /// Traffic Selector - Responder.
    pub const TSR: u8 = 45;
    /// Encrypted and Authenticated.
    pub const SK: u8 = 46;
    /// Encrypted and Authenticated Fragment (RFC 7383 §2.5).
    pub const SKF: u8 = 53;
}

/// Protocol IDs of proposals, notifies and deletes (§3.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProtocolId {
    /// The IKE SA itself.
    Ike = 1,
    /// AH.
    Ah = 2,
    /// ESP.
    Esp = 3,
}

impl ProtocolId {
    /// The SPI size in a Delete payload (§3.11): none for IKE (the SA the message travels in),
    /// 4 for AH and ESP.
    pub fn delete_spi_len(self) -> usize {
        match self {
            Self::Ike => 0,
            Self::Ah | Self::Esp => 4,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Ike,
            2 => Self::Ah,
            3 => Self::Esp,
            _ => return None,
        })
    }
}

/// Transform types (§3.3.2).
pub mod transform_type {
    /// Encryption algorithm.
    pub const ENCR: u8 = 1;
    /// Pseudorandom function.
    pub const PRF: u8 = 2;
    /// Integrity algorithm.
    pub const INTEG: u8 = 3;
    /// Diffie-Hellman group.
    pub const DH: u8 = 4;
    /// Extended sequence numbers.
    pub const ESN: u8 = 5;
}

/// Transform attribute type: Key Length in bits, always TV format (§3.3.5).
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Notify message types (§3.10.1, RFC 7383, RFC 5996 registry). An open registry: a newtype,
/// so unknown types survive a parse and a build.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotifyType(pub u16);

impl NotifyType {
    /// A critical payload was not understood.
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: Self = Self(1);
    /// A message arrived for an unknown IKE SA.
    pub const INVALID_IKE_SPI: Self = Self(4);
    /// The major version is not supported.
    pub const INVALID_MAJOR_VERSION: Self = Self(5);
    /// The message is malformed.
    pub const INVALID_SYNTAX: Self = Self(7);
    /// The message ID is outside the window.
    pub const INVALID_MESSAGE_ID: Self = Self(9);
    /// An ESP packet arrived for an unknown SPI.
    pub const INVALID_SPI: Self = Self(11);
    /// None of the proposals is acceptable.
    pub const NO_PROPOSAL_CHOSEN: Self = Self(14);
    /// The KE payload uses another group than the one the responder wants (data: the group).
    pub const INVALID_KE_PAYLOAD: Self = Self(17);
    /// The AUTH payload did not verify, or the identity is not allowed.
    pub const AUTHENTICATION_FAILED: Self = Self(24);
    /// The traffic selectors are not acceptable.
    pub const TS_UNACCEPTABLE: Self = Self(38);
    /// NO_ADDITIONAL_SAS (35): CREATE_CHILD_SA for a Child SA we do not make.
    pub const NO_ADDITIONAL_SAS: Self = Self(35);
    /// Do not retry this exchange now.
    pub const TEMPORARY_FAILURE: Self = Self(43);
    /// CHILD_SA_NOT_FOUND (44): a rekey or delete names a Child SA we do not have.
    pub const CHILD_SA_NOT_FOUND: Self = Self(44);
    /// The first IKE SA between these peers: delete the old ones.
    pub const INITIAL_CONTACT: Self = Self(16384);
    /// The responder is under load: repeat the request with this cookie (§2.6).
    pub const COOKIE: Self = Self(16390);
    /// Transport mode is requested.
    pub const USE_TRANSPORT_MODE: Self = Self(16391);
    /// Which SA a CREATE_CHILD_SA rekeys.
    pub const REKEY_SA: Self = Self(16393);
    /// NAT detection: hash of the sender's address and port (§2.23).
    pub const NAT_DETECTION_SOURCE_IP: Self = Self(16388);
    /// NAT detection: hash of the receiver's address and port (§2.23).
    pub const NAT_DETECTION_DESTINATION_IP: Self = Self(16389);
    /// The sender can reassemble IKE fragments (RFC 7383 §2.3).
    pub const IKEV2_FRAGMENTATION_SUPPORTED: Self = Self(16430);

    /// Types below 16384 report errors (§3.10.1).
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }

    /// The registry name, if we know it.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::UNSUPPORTED_CRITICAL_PAYLOAD => "UNSUPPORTED_CRITICAL_PAYLOAD",
            Self::INVALID_IKE_SPI => "INVALID_IKE_SPI",
            Self::INVALID_MAJOR_VERSION => "INVALID_MAJOR_VERSION",
            Self::INVALID_SYNTAX => "INVALID_SYNTAX",
            Self::INVALID_MESSAGE_ID => "INVALID_MESSAGE_ID",
            Self::INVALID_SPI => "INVALID_SPI",
            Self::NO_PROPOSAL_CHOSEN => "NO_PROPOSAL_CHOSEN",
            Self::INVALID_KE_PAYLOAD => "INVALID_KE_PAYLOAD",
            Self::AUTHENTICATION_FAILED => "AUTHENTICATION_FAILED",
            Self::TS_UNACCEPTABLE => "TS_UNACCEPTABLE",
            Self::TEMPORARY_FAILURE => "TEMPORARY_FAILURE",
            Self::NO_ADDITIONAL_SAS => "NO_ADDITIONAL_SAS",
            Self::INITIAL_CONTACT => "INITIAL_CONTACT",
            Self::COOKIE => "COOKIE",
            Self::USE_TRANSPORT_MODE => "USE_TRANSPORT_MODE",
            Self::REKEY_SA => "REKEY_SA",
            Self::CHILD_SA_NOT_FOUND => "CHILD_SA_NOT_FOUND",
            Self::NAT_DETECTION_SOURCE_IP => "NAT_DETECTION_SOURCE_IP",
            Self::NAT_DETECTION_DESTINATION_IP => "NAT_DETECTION_DESTINATION_IP",
            Self::IKEV2_FRAGMENTATION_SUPPORTED => "IKEV2_FRAGMENTATION_SUPPORTED",
            _ => return None,
        })
    }
}

impl fmt::Debug for NotifyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for NotifyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "NOTIFY_{}", self.0),
        }
    }
}

/// Why a message could not be parsed; each variant names the check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The input ends inside the named field or structure.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The major version is not 2 (§3.1: answer INVALID_MAJOR_VERSION, or drop).
    #[error("unsupported IKE version {0:#04x}")]
    UnsupportedVersion(u8),
    /// The exchange type is not one of IKEv2's four.
    #[error("unknown exchange type {0}")]
    UnknownExchange(u8),
    /// The header's length field differs from the datagram length.
    #[error("header length {header} but datagram has {actual} bytes")]
    LengthMismatch {
        /// The header's length field.
        header: u32,
        /// The datagram's length.
        actual: usize,
    },
    /// A length field is smaller than its own header or larger than what encloses it.
    #[error("bad length in {0}")]
    BadLength(&'static str),
    /// Bytes after the last payload of the chain.
    #[error("trailing bytes after the last payload")]
    TrailingBytes,
    /// An unknown payload has the critical bit set (§2.5).
    #[error("unsupported critical payload type {0}")]
    UnsupportedCriticalPayload(u8),
    /// The Encrypted payload is not the last one, or appears where none may (inside SK).
    #[error("encrypted payload misplaced")]
    MisplacedEncrypted,
    /// A field holds a value the RFC forbids (zero where non-zero is required, reserved set, ...).
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The Encrypted payload does not authenticate under the key (tampered, or wrong key).
    #[error("encrypted payload does not authenticate")]
    DecryptFailed,
}

/// A bounds-checked cursor: every read either returns the bytes or a [`ParseError::Truncated`].
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if self.buf.len() < n {
            return Err(ParseError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ParseError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ParseError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The IKE header (§3.1). `next_payload` and `length` are not stored: they follow from the
/// payloads and are computed when the message is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The initiator's IKE SPI (never zero).
    pub spi_i: u64,
    /// The responder's IKE SPI (zero in the first IKE_SA_INIT request).
    pub spi_r: u64,
    /// The exchange type.
    pub exchange: ExchangeType,
    /// The flags byte ([`FLAG_INITIATOR`], [`FLAG_RESPONSE`], [`FLAG_VERSION`]).
    pub flags: u8,
    /// The message ID.
    pub message_id: u32,
}

impl Header {
    /// Whether the Response flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }
    /// Whether the Initiator flag is set (the sender is the original initiator).
    pub fn from_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }
}

/// One transform attribute (§3.3.5): TV (2-byte value) or TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// Type/value format (the AF bit set).
    Tv {
        /// Attribute type (15 bits).
        ty: u16,
        /// The value.
        value: u16,
    },
    /// Type/length/value format.
    Tlv {
        /// Attribute type (15 bits).
        ty: u16,
        /// The value.
        value: Vec<u8>,
    },
}

/// One transform of a proposal (§3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    /// Transform type ([`transform_type`]).
    pub ty: u8,
    /// Transform ID within its type.
    pub id: u16,
    /// Attributes (in practice: the key length).
    pub attributes: Vec<Attribute>,
}

impl Transform {
    /// A transform without attributes.
    pub fn new(ty: u8, id: u16) -> Self {
        Self {
            ty,
            id,
            attributes: Vec::new(),
        }
    }

    /// The Key Length attribute, if present.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Tv { ty, value } if *ty == ATTR_KEY_LENGTH => Some(*value),
            _ => None,
        })
    }
}

/// One proposal of an SA payload (§3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number: 1 for the first, consecutive; a response repeats the chosen one's.
    pub number: u8,
    /// IKE, AH or ESP.
    pub protocol: ProtocolId,
    /// The sender's SPI: empty for IKE in IKE_SA_INIT, 8 bytes when rekeying IKE, 4 for ESP.
    pub spi: Vec<u8>,
    /// The transforms (at least one).
    pub transforms: Vec<Transform>,
}

/// Identification types tandem uses (§3.5); others are kept as [`Identity::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR (1).
    Ipv4(Ipv4Addr),
    /// ID_FQDN (2): an ASCII domain name, no terminator.
    Fqdn(String),
    /// ID_IPV6_ADDR (5).
    Ipv6(Ipv6Addr),
    /// Any other type, raw.
    Other {
        /// The ID type.
        ty: u8,
        /// The identification data.
        data: Vec<u8>,
    },
}

/// ID_IPV4_ADDR.
pub const ID_IPV4_ADDR: u8 = 1;
/// ID_FQDN.
pub const ID_FQDN: u8 = 2;
/// ID_IPV6_ADDR.
pub const ID_IPV6_ADDR: u8 = 5;

impl Identity {
    /// The ID type byte.
    pub fn id_type(&self) -> u8 {
        match self {
            Self::Ipv4(_) => ID_IPV4_ADDR,
            Self::Fqdn(_) => ID_FQDN,
            Self::Ipv6(_) => ID_IPV6_ADDR,
            Self::Other { ty, .. } => *ty,
        }
    }

    /// The identification data.
    pub fn data(&self) -> Vec<u8> {
        match self {
            Self::Ipv4(a) => a.octets().to_vec(),
            Self::Fqdn(s) => s.as_bytes().to_vec(),
            Self::Ipv6(a) => a.octets().to_vec(),
            Self::Other { data, .. } => data.clone(),
        }
    }

    /// The payload body after the generic header: ID type, 3 reserved bytes, data. This is the
    /// "RestOfInitIDPayload" / "RestOfRespIDPayload" that AUTH signs (§2.15).
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.id_type(), 0, 0, 0];
        v.extend_from_slice(&self.data());
        v
    }

    fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body);
        let ty = r.u8("ID type")?;
        r.take(3, "ID reserved")?;
        let data = r.rest();
        Ok(match ty {
            ID_IPV4_ADDR => {
                let a: [u8; 4] = data
                    .try_into()
                    .map_err(|_| ParseError::BadLength("ID_IPV4_ADDR"))?;
                Self::Ipv4(a.into())
            }
            ID_IPV6_ADDR => {
                let a: [u8; 16] = data
                    .try_into()
                    .map_err(|_| ParseError::BadLength("ID_IPV6_ADDR"))?;
                Self::Ipv6(a.into())
            }
            ID_FQDN => {
                if data.is_empty() || !data.iter().all(|b| b.is_ascii_graphic()) {
                    return Err(ParseError::Invalid("ID_FQDN (not printable ASCII)"));
                }
                // All bytes are ASCII, so this cannot fail; map anyway rather than unwrap.
                Self::Fqdn(
                    String::from_utf8(data.to_vec()).map_err(|_| ParseError::Invalid("ID_FQDN"))?,
                )
            }
            _ => Self::Other {
                ty,
                data: data.to_vec(),
            },
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4(a) => write!(f, "{a}"),
            Self::Ipv6(a) => write!(f, "{a}"),
            Self::Fqdn(s) => f.write_str(s),
            Self::Other { ty, data } => write!(f, "id-type-{ty}:{} bytes", data.len()),
        }
    }
}

/// An address range of a traffic selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrRange {
    /// TS_IPV4_ADDR_RANGE (7).
    V4(Ipv4Addr, Ipv4Addr),
    /// TS_IPV6_ADDR_RANGE (8).
    V6(Ipv6Addr, Ipv6Addr),
}

/// TS_IPV4_ADDR_RANGE.
pub const TS_IPV4_ADDR_RANGE: u8 = 7;
/// TS_IPV6_ADDR_RANGE.
pub const TS_IPV6_ADDR_RANGE: u8 = 8;

/// One traffic selector (§3.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol, 0 = any.
    pub ip_proto: u8,
    /// First port (0 with `end_port` 65535 = any).
    pub start_port: u16,
    /// Last port.
    pub end_port: u16,
    /// The addresses, first and last inclusive.
    pub addrs: AddrRange,
}

/// A Notify payload (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// 0 for notifies about the IKE SA, else the protocol of `spi`.
    pub protocol: u8,
    /// The SPI the notify is about (usually empty).
    pub spi: Vec<u8>,
    /// The notify type.
    pub ty: NotifyType,
    /// Notification data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify about the IKE SA (no SPI).
    pub fn new(ty: NotifyType, data: Vec<u8>) -> Self {
        Self {
            protocol: 0,
            spi: Vec::new(),
            ty,
            data,
        }
    }
}

/// A Delete payload (§3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// IKE (no SPIs: the SA the message travels in), AH or ESP.
    pub protocol: ProtocolId,
    /// The SPIs to delete, all of the protocol's size (4 for ESP).
    pub spis: Vec<Vec<u8>>,
}

/// One payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Security Association (§3.3).
    Sa(Vec<Proposal>),
    /// Key Exchange (§3.4).
    Ke {
        /// The DH group number.
        group: u16,
        /// The public value.
        data: Vec<u8>,
    },
    /// Identification - Initiator (§3.5).
    IdI(Identity),
    /// Identification - Responder (§3.5).
    IdR(Identity),
    /// Authentication (§3.8).
    Auth {
        /// Auth method (2 = shared key message integrity code).
        method: u8,
        /// Authentication data.
        data: Vec<u8>,
    },
    /// Nonce (§3.9).
    Nonce(Vec<u8>),
    /// Notify (§3.10).
    Notify(Notify),
    /// Delete (§3.11).
    Delete(Delete),
    /// Vendor ID (§3.12).
    Vendor(Vec<u8>),
    /// Traffic Selector - Initiator (§3.13).
    TsI(Vec<TrafficSelector>),
    /// Traffic Selector - Responder (§3.13).
    TsR(Vec<TrafficSelector>),
    /// Encrypted and Authenticated (§3.14), still sealed: [`open_sk`] opens it.
    Encrypted {
        /// The type of the first payload inside.
        first_payload: u8,
        /// IV, ciphertext and ICV.
        body: Vec<u8>,
    },
    /// A payload type we do not process, without the critical bit (§2.5: skipped).
    Unknown {
        /// The payload type.
        ty: u8,
        /// The body.
        body: Vec<u8>,
    },
}

impl Payload {
    pub(crate) fn type_number(&self) -> u8 {
        use payload_type as t;
        match self {
            Self::Sa(_) => t::SA,
            Self::Ke { .. } => t::KE,
            Self::IdI(_) => t::IDI,
            Self::IdR(_) => t::IDR,
            Self::Auth { .. } => t::AUTH,
            Self::Nonce(_) => t::NONCE,
            Self::Notify(_) => t::NOTIFY,
            Self::Delete(_) => t::DELETE,
            Self::Vendor(_) => t::VENDOR,
            Self::TsI(_) => t::TSI,
            Self::TsR(_) => t::TSR,
            Self::Encrypted { .. } => t::SK,
            Self::Unknown { ty, .. } => *ty,
        }
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Sa(proposals) => write_sa(proposals, out),
            Self::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Self::IdI(id) | Self::IdR(id) => out.extend_from_slice(&id.body()),
            Self::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Self::Nonce(d) | Self::Vendor(d) => out.extend_from_slice(d),
            Self::Notify(n) => {
                out.push(n.protocol);
                out.push(n.spi.len() as u8);
                out.extend_from_slice(&n.ty.0.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Self::Delete(d) => {
                out.push(d.protocol as u8);
                out.push(d.protocol.delete_spi_len() as u8);
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Self::TsI(ts) | Self::TsR(ts) => write_ts(ts, out),
            Self::Encrypted { body, .. } => out.extend_from_slice(body),
            Self::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }
}

fn write_sa(proposals: &[Proposal], out: &mut Vec<u8>) {
    for (i, p) in proposals.iter().enumerate() {
        let start = out.len();
        out.push(if i + 1 == proposals.len() { 0 } else { 2 });
        out.push(0);
        out.extend_from_slice(&[0, 0]); // length, patched below
        out.push(p.number);
        out.push(p.protocol as u8);
        out.push(p.spi.len() as u8);
        out.push(p.transforms.len() as u8);
        out.extend_from_slice(&p.spi);
        for (j, t) in p.transforms.iter().enumerate() {
            let tstart = out.len();
            out.push(if j + 1 == p.transforms.len() { 0 } else { 3 });
            out.push(0);
            out.extend_from_slice(&[0, 0]);
            out.push(t.ty);
            out.push(0);
            out.extend_from_slice(&t.id.to_be_bytes());
            for a in &t.attributes {
                match a {
                    Attribute::Tv { ty, value } => {
                        out.extend_from_slice(&(0x8000 | ty).to_be_bytes());
                        out.extend_from_slice(&value.to_be_bytes());
                    }
                    Attribute::Tlv { ty, value } => {
                        out.extend_from_slice(&(ty & 0x7fff).to_be_bytes());
                        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                        out.extend_from_slice(value);
                    }
                }
            }
            let tlen = (out.len() - tstart) as u16;
            out[tstart + 2..tstart + 4].copy_from_slice(&tlen.to_be_bytes());
        }
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn parse_sa(body: &[u8]) -> Result<Vec<Proposal>, ParseError> {
    let mut r = Reader::new(body);
    let mut proposals = Vec::new();
    loop {
        let last = r.u8("proposal last-substruc")?;
        r.u8("proposal reserved")?;
        let len = r.u16("proposal length")? as usize;
        if len < 8 {
            return Err(ParseError::BadLength("proposal"));
        }
        let mut p = Reader::new(
            r.take(len - 4, "proposal")
                .map_err(|_| ParseError::BadLength("proposal"))?,
        );
        let number = p.u8("proposal number")?;
        let protocol = ProtocolId::from_u8(p.u8("protocol ID")?)
            .ok_or(ParseError::Invalid("proposal protocol ID"))?;
        let spi_size = p.u8("SPI size")? as usize;
        let num_transforms = p.u8("number of transforms")?;
        let spi = p.take(spi_size, "proposal SPI")?.to_vec();
        let mut transforms = Vec::with_capacity(num_transforms as usize);
        for i in 0..num_transforms {
            let tlast = p.u8("transform last-substruc")?;
            p.u8("transform reserved")?;
            let tlen = p.u16("transform length")? as usize;
            if tlen < 8 {
                return Err(ParseError::BadLength("transform"));
            }
            let mut t = Reader::new(
                p.take(tlen - 4, "transform")
                    .map_err(|_| ParseError::BadLength("transform"))?,
            );
            let ty = t.u8("transform type")?;
            t.u8("transform reserved")?;
            let id = t.u16("transform ID")?;
            let mut attributes = Vec::new();
            while !t.is_empty() {
                let at = t.u16("attribute type")?;
                if at & 0x8000 != 0 {
                    attributes.push(Attribute::Tv {
                        ty: at & 0x7fff,
                        value: t.u16("attribute value")?,
                    });
                } else {
                    let alen = t.u16("attribute length")? as usize;
                    attributes.push(Attribute::Tlv {
                        ty: at,
                        value: t.take(alen, "attribute value")?.to_vec(),
                    });
                }
            }
            let expect_last = if i + 1 == num_transforms { 0 } else { 3 };
            if tlast != expect_last {
                return Err(ParseError::Invalid("transform last-substruc"));
            }
            transforms.push(Transform { ty, id, attributes });
        }
        if !p.is_empty() {
            return Err(ParseError::BadLength("proposal (transform count)"));
        }
        if transforms.is_empty() {
            return Err(ParseError::Invalid("proposal without transforms"));
        }
        proposals.push(Proposal {
            number,
            protocol,
            spi,
            transforms,
        });
        match last {
            0 if r.is_empty() => return Ok(proposals),
            0 => return Err(ParseError::BadLength("SA (bytes after the last proposal)")),
            2 if !r.is_empty() => continue,
            2 => return Err(ParseError::Truncated("SA (more proposals announced)")),
            _ => return Err(ParseError::Invalid("proposal last-substruc")),
        }
    }
}

fn write_ts(ts: &[TrafficSelector], out: &mut Vec<u8>) {
    out.push(ts.len() as u8);
    out.extend_from_slice(&[0, 0, 0]);
    for t in ts {
        let (ty, len) = match t.addrs {
            AddrRange::V4(..) => (TS_IPV4_ADDR_RANGE, 16u16),
            AddrRange::V6(..) => (TS_IPV6_ADDR_RANGE, 40u16),
        };
        out.push(ty);
        out.push(t.ip_proto);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&t.start_port.to_be_bytes());
        out.extend_from_slice(&t.end_port.to_be_bytes());
        match t.addrs {
            AddrRange::V4(a, b) => {
                out.extend_from_slice(&a.octets());
                out.extend_from_slice(&b.octets());
            }
            AddrRange::V6(a, b) => {
                out.extend_from_slice(&a.octets());
                out.extend_from_slice(&b.octets());
            }
        }
    }
}

fn parse_ts(body: &[u8]) -> Result<Vec<TrafficSelector>, ParseError> {
    let mut r = Reader::new(body);
    let n = r.u8("number of TSs")?;
    r.take(3, "TS reserved")?;
    if n == 0 {
        return Err(ParseError::Invalid("TS payload without selectors"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let ty = r.u8("TS type")?;
        let ip_proto = r.u8("TS IP protocol")?;
        let len = r.u16("TS length")?;
        let start_port = r.u16("TS start port")?;
        let end_port = r.u16("TS end port")?;
        let addrs = match (ty, len) {
            (TS_IPV4_ADDR_RANGE, 16) => {
                let a: [u8; 4] = r
                    .take(4, "TS address")?
                    .try_into()
                    .map_err(|_| ParseError::Truncated("TS address"))?;
                let b: [u8; 4] = r
                    .take(4, "TS address")?
                    .try_into()
                    .map_err(|_| ParseError::Truncated("TS address"))?;
                AddrRange::V4(a.into(), b.into())
            }
            (TS_IPV6_ADDR_RANGE, 40) => {
                let a: [u8; 16] = r
                    .take(16, "TS address")?
                    .try_into()
                    .map_err(|_| ParseError::Truncated("TS address"))?;
                let b: [u8; 16] = r
                    .take(16, "TS address")?
                    .try_into()
                    .map_err(|_| ParseError::Truncated("TS address"))?;
                AddrRange::V6(a.into(), b.into())
            }
            (TS_IPV4_ADDR_RANGE | TS_IPV6_ADDR_RANGE, _) => {
                return Err(ParseError::BadLength("traffic selector"));
            }
            _ => return Err(ParseError::Invalid("TS type (only IPv4/IPv6 ranges)")),
        };
        out.push(TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            addrs,
        });
    }
    if !r.is_empty() {
        return Err(ParseError::BadLength(
            "TS payload (bytes after the selectors)",
        ));
    }
    Ok(out)
}

fn parse_body(ty: u8, critical: bool, body: &[u8]) -> Result<Payload, ParseError> {
    use payload_type as t;
    let mut r = Reader::new(body);
    Ok(match ty {
        t::SA => Payload::Sa(parse_sa(body)?),
        t::KE => {
            let group = r.u16("KE group")?;
            r.take(2, "KE reserved")?;
            Payload::Ke {
                group,
                data: r.rest().to_vec(),
            }
        }
        t::IDI => Payload::IdI(Identity::parse(body)?),
        t::IDR => Payload::IdR(Identity::parse(body)?),
        t::AUTH => {
            let method = r.u8("auth method")?;
            r.take(3, "auth reserved")?;
            Payload::Auth {
                method,
                data: r.rest().to_vec(),
            }
        }
        t::NONCE => Payload::Nonce(body.to_vec()),
        t::NOTIFY => {
            let protocol = r.u8("notify protocol ID")?;
            let spi_size = r.u8("notify SPI size")? as usize;
            let ty = NotifyType(r.u16("notify type")?);
            let spi = r.take(spi_size, "notify SPI")?.to_vec();
            Payload::Notify(Notify {
                protocol,
                spi,
                ty,
                data: r.rest().to_vec(),
            })
        }
        t::DELETE => {
            let protocol = ProtocolId::from_u8(r.u8("delete protocol ID")?)
                .ok_or(ParseError::Invalid("delete protocol ID"))?;
            let spi_size = r.u8("delete SPI size")? as usize;
            let n = r.u16("delete SPI count")? as usize;
            if spi_size != protocol.delete_spi_len() || (protocol == ProtocolId::Ike && n != 0) {
                return Err(ParseError::Invalid("delete SPI size"));
            }
            let mut spis = Vec::new();
            for _ in 0..n {
                spis.push(r.take(spi_size, "delete SPI")?.to_vec());
            }
            if !r.is_empty() {
                return Err(ParseError::BadLength("delete (bytes after the SPIs)"));
            }
            Payload::Delete(Delete { protocol, spis })
        }
        t::VENDOR => Payload::Vendor(body.to_vec()),
        t::TSI => Payload::TsI(parse_ts(body)?),
        t::TSR => Payload::TsR(parse_ts(body)?),
        _ if critical => return Err(ParseError::UnsupportedCriticalPayload(ty)),
        _ => Payload::Unknown {
            ty,
            body: body.to_vec(),
        },
    })
}

/// Parses a payload chain that starts with payload type `first` and fills `buf` exactly.
/// `allow_sk`: whether an Encrypted payload may appear (only in the outer chain).
pub(crate) fn parse_chain(
    mut next: u8,
    buf: &[u8],
    allow_sk: bool,
) -> Result<Vec<Payload>, ParseError> {
    let mut r = Reader::new(buf);
    let mut payloads = Vec::new();
    while next != payload_type::NONE {
        let ty = next;
        next = r.u8("payload header")?;
        let flags = r.u8("payload header")?;
        let len = r.u16("payload length")? as usize;
        if len < GENERIC_HEADER_LEN {
            return Err(ParseError::BadLength("payload"));
        }
        let body = r
            .take(len - GENERIC_HEADER_LEN, "payload body")
            .map_err(|_| ParseError::BadLength("payload"))?;
        if ty == payload_type::SK {
            if !allow_sk || !r.is_empty() {
                return Err(ParseError::MisplacedEncrypted);
            }
            if body.len() < SK_IV_LEN + SK_ICV_LEN + 1 {
                return Err(ParseError::BadLength("encrypted payload"));
            }
            payloads.push(Payload::Encrypted {
                first_payload: next,
                body: body.to_vec(),
            });
            return Ok(payloads);
        }
        payloads.push(parse_body(ty, flags & 0x80 != 0, body)?);
    }
    if !r.is_empty() {
        return Err(ParseError::TrailingBytes);
    }
    Ok(payloads)
}

pub(crate) fn write_chain(payloads: &[Payload], out: &mut Vec<u8>, after_last: u8) {
    for (i, p) in payloads.iter().enumerate() {
        let next = match (p, payloads.get(i + 1)) {
            (Payload::Encrypted { first_payload, .. }, _) => *first_payload,
            (_, Some(n)) => n.type_number(),
            (_, None) => after_last,
        };
        let start = out.len();
        out.push(next);
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        p.write_body(out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// A parsed or to-be-built IKE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The payloads in order; if the message is encrypted, the last one is
    /// [`Payload::Encrypted`].
    pub payloads: Vec<Payload>,
}

pub(crate) fn write_header(h: &Header, next: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&h.spi_i.to_be_bytes());
    out.extend_from_slice(&h.spi_r.to_be_bytes());
    out.push(next);
    out.push(IKE_VERSION);
    out.push(h.exchange as u8);
    out.push(h.flags);
    out.extend_from_slice(&h.message_id.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // length, patched by the caller
}

fn patch_length(out: &mut [u8]) {
    let len = out.len() as u32;
    out[24..28].copy_from_slice(&len.to_be_bytes());
}

/// Parses just the header and the next-payload byte (for dispatching before a full parse).
pub fn parse_header(datagram: &[u8]) -> Result<(Header, u8), ParseError> {
    let mut r = Reader::new(datagram);
    let spi_i = r.u64("IKE header")?;
    let spi_r = r.u64("IKE header")?;
    let next = r.u8("IKE header")?;
    let version = r.u8("IKE header")?;
    let exchange = r.u8("IKE header")?;
    let flags = r.u8("IKE header")?;
    let message_id = r.u32("IKE header")?;
    let length = r.u32("IKE header")?;
    if version >> 4 != 2 {
        return Err(ParseError::UnsupportedVersion(version));
    }
    let exchange = ExchangeType::from_u8(exchange).ok_or(ParseError::UnknownExchange(exchange))?;
    if length as usize != datagram.len() {
        return Err(ParseError::LengthMismatch {
            header: length,
            actual: datagram.len(),
        });
    }
    if spi_i == 0 {
        return Err(ParseError::Invalid("initiator SPI zero"));
    }
    Ok((
        Header {
            spi_i,
            spi_r,
            exchange,
            flags,
            message_id,
        },
        next,
    ))
}

impl Message {
    /// Parses one IKE message (a whole UDP payload, without the non-ESP marker).
    pub fn parse(datagram: &[u8]) -> Result<Self, ParseError> {
        if datagram.len() > MAX_MESSAGE_LEN {
            return Err(ParseError::BadLength("message"));
        }
        let (header, next) = parse_header(datagram)?;
        let payloads = parse_chain(next, &datagram[HEADER_LEN..], true)?;
        Ok(Self { header, payloads })
    }

    /// The message as bytes (unencrypted payloads; an [`Payload::Encrypted`] is written as is).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let next = self.payloads.first().map_or(0, Payload::type_number);
        write_header(&self.header, next, &mut out);
        write_chain(&self.payloads, &mut out, payload_type::NONE);
        patch_length(&mut out);
        out
    }

    /// The first Notify of the given type.
    pub fn notify(&self, ty: NotifyType) -> Option<&Notify> {
        find_notify(&self.payloads, ty)
    }
}

/// The first Notify of type `ty` in `payloads`.
pub fn find_notify(payloads: &[Payload], ty: NotifyType) -> Option<&Notify> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty == ty => Some(n),
        _ => None,
    })
}

pub(crate) fn aead_key(keys: &SaKeys) -> LessSafeKey {
    // AES_256_GCM takes exactly 32 bytes, which the array type guarantees.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, &keys.key).expect("32-byte AES-256 key");
    LessSafeKey::new(unbound)
}

pub(crate) fn sk_nonce(keys: &SaKeys, iv: &[u8; SK_IV_LEN]) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&keys.salt);
    n[4..].copy_from_slice(iv);
    Nonce::assume_unique_for_key(n)
}

/// Builds an encrypted message: `header`, then the SK payload holding `inner` sealed with
/// AES-256-GCM-16 under `keys` (RFC 5282 §3 and §5.1): nonce = salt || `iv`, AAD = the IKE
/// header and the SK generic header, plaintext = payloads || no padding || pad length 0.
/// `iv` must never repeat for a key: the caller passes a per-SA message counter.
pub fn seal_message(header: &Header, inner: &[Payload], keys: &SaKeys, iv: u64) -> Vec<u8> {
    let mut plain = Vec::with_capacity(256);
    write_chain(inner, &mut plain, payload_type::NONE);
    let first = inner.first().map_or(0, Payload::type_number);
    seal_plaintext(header, first, &plain, keys, iv)
}

/// [`seal_message`] for an inner payload chain given as bytes (`plain`, whose first payload has
/// type `first_payload`), sealed as is: what a fuzzer uses to reach the code behind the AEAD.
pub fn seal_plaintext(
    header: &Header,
    first_payload: u8,
    plain: &[u8],
    keys: &SaKeys,
    iv: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + GENERIC_HEADER_LEN + plain.len() + 32);
    write_header(header, payload_type::SK, &mut out);
    let sk_start = out.len();
    out.push(first_payload);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    let aad_end = out.len();
    let iv = iv.to_be_bytes();
    out.extend_from_slice(&iv);
    let pt_start = out.len();
    out.extend_from_slice(plain);
    out.push(0); // Pad Length: GCM needs no padding (RFC 5282 §3)
    let sk_len = (out.len() - sk_start + SK_ICV_LEN) as u16;
    out[sk_start + 2..sk_start + 4].copy_from_slice(&sk_len.to_be_bytes());
    let total = (out.len() + SK_ICV_LEN) as u32;
    out[24..28].copy_from_slice(&total.to_be_bytes());
    let (aad, rest) = out.split_at_mut(pt_start);
    // Sealing into a Vec-backed buffer of any length cannot fail with ring's AES-GCM except above
    // its 64 GiB per-message limit, which a 64 KiB message never reaches.
    #[allow(clippy::expect_used)]
    let tag = aead_key(keys)
        .seal_in_place_separate_tag(sk_nonce(keys, &iv), Aad::from(&aad[..aad_end]), rest)
        .expect("IKE message far below the AES-GCM length limit");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Parses an inner payload chain (the plaintext of an SK payload, or of reassembled
/// fragments) that starts with payload type `first_payload`.
pub fn parse_payloads(first_payload: u8, plain: &[u8]) -> Result<Vec<Payload>, ParseError> {
    parse_chain(first_payload, plain, false)
}

/// Authenticates and decrypts the SK payload of `datagram` (already parsed as `msg`) with the
/// sender's key, and parses the payloads inside.
pub fn open_sk(datagram: &[u8], msg: &Message, keys: &SaKeys) -> Result<Vec<Payload>, ParseError> {
    let Some(Payload::Encrypted {
        first_payload,
        body,
    }) = msg.payloads.last()
    else {
        return Err(ParseError::Invalid("message has no encrypted payload"));
    };
    // The SK payload is the last, so its body ends the datagram; the AAD is everything before
    // the IV (RFC 5282 §5.1: the IKE header, any payloads before SK, and SK's generic header).
    let aad_end = datagram.len() - body.len();
    let mut iv = [0u8; SK_IV_LEN];
    iv.copy_from_slice(&body[..SK_IV_LEN]);
    let mut ct = body[SK_IV_LEN..].to_vec();
    let pt = aead_key(keys)
        .open_in_place(
            sk_nonce(keys, &iv),
            Aad::from(&datagram[..aad_end]),
            &mut ct,
        )
        .map_err(|_| ParseError::DecryptFailed)?;
    let (&pad_len, rest) = pt
        .split_last()
        .ok_or(ParseError::BadLength("encrypted payload"))?;
    let payload_len = rest
        .len()
        .checked_sub(pad_len as usize)
        .ok_or(ParseError::BadLength("encrypted payload padding"))?;
    parse_chain(*first_payload, &rest[..payload_len], false)
}
