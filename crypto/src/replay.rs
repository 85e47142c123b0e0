//! The RFC 6479 anti-replay window: a ring of 8192 bits (128 words of 64 bits).
//!
//! Flow (docs/protocol.md): `check(seq)` before the AEAD (cheap, no state change), `commit(seq)` only after
//! the tag verified. The window accepts any sequence number newer than the highest seen, and an
//! older one only if it is within the window's size of the highest and not seen before. Sliding forward
//! clears whole words, so the cost of a far jump is bounded by the ring size, not the jump.
//! Sequence number 0 is never valid (ESP starts at 1, RFC 4303 §3.3.3).
//!
//! The accepted window is a parameter ([`WindowSize`], 32..=[`WINDOW`] packets; IKEv2
//! gateways are configured with 64..2048, AWS among them), the ring is not: every window keeps the full 8192-bit ring and refuses as
//! too old whatever lies `size` or more behind the top. That is exactly a sliding window of `size`
//! packets: the ring holds correct bits for the [`WINDOW`] numbers below the top, a superset of the
//! `size` numbers the check may consult, so the answers are those of an ideal bitmap of `size` bits
//! (the property test holds every size to the same `BTreeSet` model). A ring sized to the window
//! would save memory (1 KiB per inbound SA at most) but would round the window up to whole words
//! plus the one partial word of RFC 6479 §2, and make the type generic or heap-allocated; the fixed
//! ring keeps `ReplayWindow` one fixed-size value (no heap, no type parameter) with the same
//! per-packet cost: one compare against a field instead of a constant.

/// Bits per word of the ring.
const WORD_BITS: u64 = 64;
/// Words in the ring: 8192 bits (docs/protocol.md).
const RING_WORDS: usize = 128;
/// Bits in the ring.
pub const RING_BITS: u64 = WORD_BITS * RING_WORDS as u64;
/// Packets behind the highest one that are still accepted: the ring minus one word, because the
/// word holding the highest bit is only partly history (RFC 6479 §2).
pub const WINDOW: u64 = RING_BITS - WORD_BITS;
/// The smallest window: RFC 4303 §3.4.3 requires receivers to support at least 32 packets.
pub const MIN_WINDOW: u64 = 32;

/// How many packets behind the highest one the window accepts: [`MIN_WINDOW`]..=[`WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize(u64);

impl WindowSize {
    /// The largest window, [`WINDOW`] packets: tandem's own SAs (docs/protocol.md).
    pub const MAX: Self = Self(WINDOW);

    /// A window of `packets`, or `None` outside [`MIN_WINDOW`]..=[`WINDOW`].
    pub const fn new(packets: u64) -> Option<Self> {
        if packets >= MIN_WINDOW && packets <= WINDOW {
            Some(Self(packets))
        } else {
            None
        }
    }

    /// The size in packets.
    pub const fn packets(self) -> u64 {
        self.0
    }
}

impl Default for WindowSize {
    fn default() -> Self {
        Self::MAX
    }
}

/// Why the window refused a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Sequence number 0 is never sent (RFC 4303 §3.3.3).
    #[error("sequence number 0")]
    Zero,
    /// The number is the window's size or more behind the highest accepted one.
    #[error("sequence number too old for the replay window")]
    TooOld,
    /// The number was already accepted.
    #[error("duplicate sequence number")]
    Duplicate,
}

/// The anti-replay state of one inbound SA.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted sequence number (0 = none yet).
    top: u64,
    /// Packets behind `top` still accepted; at most [`WINDOW`], the part of the ring kept exact.
    size: u64,
    ring: [u64; RING_WORDS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window of the largest size, [`WINDOW`]: nothing accepted yet.
    pub const fn new() -> Self {
        Self::with_size(WindowSize::MAX)
    }

    /// An empty window that accepts numbers less than `size` behind the highest one.
    pub const fn with_size(size: WindowSize) -> Self {
        Self {
            top: 0,
            size: size.0,
            ring: [0; RING_WORDS],
        }
    }

    /// How many packets behind the highest one are accepted.
    pub const fn size(&self) -> WindowSize {
        WindowSize(self.size)
    }

    /// The highest accepted sequence number (0 if none).
    pub const fn top(&self) -> u64 {
        self.top
    }

    fn slot(seq: u64) -> (usize, u64) {
        let word = ((seq / WORD_BITS) % RING_WORDS as u64) as usize;
        (word, 1u64 << (seq % WORD_BITS))
    }

    /// Would `seq` be accepted? No state change.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        let (word, bit) = Self::slot(seq);
        if self.ring[word] & bit != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Marks `seq` as received (after the packet authenticated); re-checks, so a second commit of
    /// the same number fails.
    pub fn commit(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if seq > self.top {
            let old_word = self.top / WORD_BITS;
            let new_word = seq / WORD_BITS;
            // Clear the words that the ring wraps onto, at most the whole ring.
            let clear = (new_word - old_word).min(RING_WORDS as u64);
            for i in 1..=clear {
                let w = ((old_word + i) % RING_WORDS as u64) as usize;
                self.ring[w] = 0;
            }
            self.top = seq;
        }
        let (word, bit) = Self::slot(seq);
        self.ring[word] |= bit;
        Ok(())
    }
}
