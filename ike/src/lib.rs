//! IKEv2 (RFC 7296) for tandem's `protocol = "ikev2"` connections, sans-IO: no sockets, no
//! clock, no OS randomness; time and an RNG are passed in, like `tandem-crypto`.
//!
//! - [`wire`]: the message codec (header, payloads, the AES-GCM SK payload of RFC 5282).
//! - [`keys`]: prf/prf+, SKEYSEED and the IKE SA keys, Child SA KEYMAT, the PSK AUTH, ECDH
//!   groups 19/20 and Curve25519 (31).
//! - [`nat`]: NAT-D hashes, the move to the NAT-T port and the non-ESP marker framing
//!   (RFC 7296 §2.23, RFC 3948).
//! - [`cookie`]: stateless COOKIEs and the admission rule for IKE_SA_INIT under load
//!   (RFC 7296 §2.6).
//! - [`frag`]: IKE fragmentation (RFC 7383): sealing fragments and bounded reassembly.
//! - [`proposal`]: the proposals we offer and the responder's choice among a peer's.
//! - [`ts`]: traffic-selector narrowing.
//! - [`sa`]: one IKE SA as a state machine: IKE_SA_INIT + IKE_AUTH (PSK) as initiator or
//!   responder, retransmission and the response cache, ending in the first Child SA.
#![forbid(unsafe_code)]

pub mod cookie;
pub mod frag;
pub mod keys;
pub mod nat;
pub mod proposal;
pub mod sa;
pub mod ts;
pub mod wire;

pub use cookie::{Admission, AdmissionPolicy, CookieJar};
pub use frag::Fragmentation;
pub use keys::{DhGroup, IkeKeys, KeyShare, Prf, Psk};
pub use nat::NatT;
pub use proposal::{DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, EspProposal, IkeProposal};
pub use sa::{
    ChildSa, Config, Dropped, Established, Event, Failure, FirstChild, IkeSa, Options, Role,
};
pub use wire::{Identity, Message, NotifyType, ParseError, TrafficSelector};
