//! tandem's protocol cryptography, sans-IO: the Noise IKpsk2 handshake, the key schedule, the ESP
//! security association (seal/open in place; ESN or 32-bit sequence numbers) and the RFC 6479
//! anti-replay window (of a configurable size).
//! No sockets and no clocks: time and randomness are passed in.
//!
//! - [`keys`]: static keys, PSKs, SPIs, TAI64N timestamps.
//! - [`handshake`]: `Noise_IKpsk2_25519_AESGCM_SHA256` with mac1/mac2/cookies and the key schedule.
//! - [`esp`]: the SA, `seal`/`open` in place.
//! - [`replay`]: the anti-replay window.
#![forbid(unsafe_code)]

pub mod esp;
pub mod handshake;
pub mod keys;
mod noise;
pub mod replay;

pub use esp::{
    HEADROOM, InboundParams, InboundSa, OpenError, Opened, OutboundSa, PeerIv, SaKeys, SealError,
    Sealed, SeqMode, TAILROOM, peek_spi,
};
pub use handshake::{
    Cookie, Established, HandshakeError, Initiator, MessageType, Responder, ResponderOutcome,
    message_type,
};
pub use keys::{Psk, PublicKey, Spi, StaticSecret, Tai64N};
pub use rand_core;
pub use replay::{ReplayError, ReplayWindow, WindowSize};
