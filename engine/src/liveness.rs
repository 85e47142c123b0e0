//! Liveness messages: the plaintext of an ESP packet whose next header is 253
//! (docs/protocol.md: "use for experimentation and testing", RFC 3692 — private to tandem).
//!
//! Every message is 20 bytes, all integers big-endian, so the ESP ciphertext stays 4-byte
//! aligned with the minimum 2 bytes of pad:
//!
//! ```text
//! | type (1) | flags (1) | reserved (2) = 0 | id (8) | timestamp (8) |
//! type  1 keepalive      id = 0, timestamp = 0
//!       2 echo request   id chosen by the sender, timestamp = sender's clock in ns (opaque to the peer)
//!       3 echo reply     id and timestamp copied from the request
//!       4 closing        the sender is shutting the tunnel down: Down at once, no DPD wait
//! flags bit 0  HEARS_YOU: the sender received an authenticated packet on this tunnel within its
//!              dpd_timeout (docs/protocol.md, the BFD-like view); carried by every type
//!       bit 1  PROBE: an echo of a drill probe (`Engine::send_probe`); the reply becomes an Event
//! ```
//!
//! Unknown types and non-zero reserved bytes are rejected as malformed (so a later version can
//! use them without being misread).

/// Size of every liveness message.
pub const LIVENESS_MSG_LEN: usize = 20;

/// ESP next header of liveness messages (IANA "use for experimentation and testing", RFC 3692);
/// one definition, in the crypto crate's ESP module.
pub use tandem_crypto::esp::NEXT_HEADER_LIVENESS;

const FLAG_HEARS_YOU: u8 = 0x01;
const FLAG_PROBE: u8 = 0x02;

/// A parsed liveness message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessMsg {
    /// What it is.
    pub kind: LivenessKind,
    /// The sender hears us (received an authenticated packet within its dpd_timeout).
    pub hears_you: bool,
    /// Echo of a drill probe.
    pub probe: bool,
    /// Echo id.
    pub id: u64,
    /// Echo timestamp (ns on the requester's clock).
    pub timestamp: u64,
}

/// The message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivenessKind {
    /// Liveness only.
    Keepalive = 1,
    /// DPD echo request.
    EchoRequest = 2,
    /// DPD echo reply.
    EchoReply = 3,
    /// The peer is taking the tunnel down.
    Closing = 4,
}

impl LivenessMsg {
    /// A keepalive carrying our view.
    #[must_use]
    pub fn keepalive(hears_you: bool) -> Self {
        LivenessMsg {
            kind: LivenessKind::Keepalive,
            hears_you,
            probe: false,
            id: 0,
            timestamp: 0,
        }
    }

    /// Writes the message into `out[..LIVENESS_MSG_LEN]`.
    pub fn write(&self, out: &mut [u8; LIVENESS_MSG_LEN]) {
        out[0] = self.kind as u8;
        out[1] = if self.hears_you { FLAG_HEARS_YOU } else { 0 }
            | if self.probe { FLAG_PROBE } else { 0 };
        out[2] = 0;
        out[3] = 0;
        out[4..12].copy_from_slice(&self.id.to_be_bytes());
        out[12..20].copy_from_slice(&self.timestamp.to_be_bytes());
    }

    /// Parses a message; `None` if it is not a valid one.
    #[must_use]
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != LIVENESS_MSG_LEN
            || b[2] != 0
            || b[3] != 0
            || b[1] & !(FLAG_HEARS_YOU | FLAG_PROBE) != 0
        {
            return None;
        }
        let kind = match b[0] {
            1 => LivenessKind::Keepalive,
            2 => LivenessKind::EchoRequest,
            3 => LivenessKind::EchoReply,
            4 => LivenessKind::Closing,
            _ => return None,
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[4..12]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[12..20]);
        Some(LivenessMsg {
            kind,
            hears_you: b[1] & FLAG_HEARS_YOU != 0,
            probe: b[1] & FLAG_PROBE != 0,
            id: u64::from_be_bytes(id),
            timestamp: u64::from_be_bytes(ts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_type_round_trips_through_its_documented_bytes() {
        let m = LivenessMsg {
            kind: LivenessKind::EchoRequest,
            hears_you: true,
            probe: true,
            id: 0x0102_0304_0506_0708,
            timestamp: 42,
        };
        let mut b = [0u8; LIVENESS_MSG_LEN];
        m.write(&mut b);
        assert_eq!(
            b,
            [2, 3, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 42]
        );
        assert_eq!(LivenessMsg::parse(&b), Some(m));
        for kind in [
            LivenessKind::Keepalive,
            LivenessKind::EchoReply,
            LivenessKind::Closing,
        ] {
            let m = LivenessMsg {
                kind,
                ..LivenessMsg::keepalive(false)
            };
            m.write(&mut b);
            assert_eq!(LivenessMsg::parse(&b), Some(m));
        }
    }

    #[test]
    fn unknown_types_flags_reserved_bytes_or_lengths_are_rejected() {
        let mut b = [0u8; LIVENESS_MSG_LEN];
        LivenessMsg::keepalive(true).write(&mut b);
        assert!(LivenessMsg::parse(&b[..19]).is_none());
        let mut c = b;
        c[0] = 9;
        assert!(LivenessMsg::parse(&c).is_none());
        let mut c = b;
        c[1] = 0x80;
        assert!(LivenessMsg::parse(&c).is_none());
        let mut c = b;
        c[3] = 1;
        assert!(LivenessMsg::parse(&c).is_none());
    }
}
