//! The RFC 6479 anti-replay window: a ring of 8192 bits (128 words of 64 bits).
//!
//! Flow (docs/protocol.md): `check(seq)` before the AEAD (cheap, no state change), `commit(seq)` only after
//! the tag verified. The window accepts any sequence number newer than the highest seen, and an
//! older one only if it is within [`WINDOW`] of the highest and not seen before. Sliding forward
//! clears whole words, so the cost of a far jump is bounded by the ring size, not the jump.
//! Sequence number 0 is never valid (ESP starts at 1, RFC 4303 §3.3.3).

/// Bits per word of the ring.
const WORD_BITS: u64 = 64;
/// Words in the ring: 8192 bits (docs/protocol.md).
const RING_WORDS: usize = 128;
/// Bits in the ring.
pub const RING_BITS: u64 = WORD_BITS * RING_WORDS as u64;
/// Packets behind the highest one that are still accepted: the ring minus one word, because the
/// word holding the highest bit is only partly history (RFC 6479 §2).
pub const WINDOW: u64 = RING_BITS - WORD_BITS;

/// Why the window refused a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Sequence number 0 is never sent (RFC 4303 §3.3.3).
    #[error("sequence number 0")]
    Zero,
    /// The number is [`WINDOW`] or more behind the highest accepted one.
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
    ring: [u64; RING_WORDS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: nothing accepted yet.
    pub const fn new() -> Self {
        Self {
            top: 0,
            ring: [0; RING_WORDS],
        }
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
        if self.top - seq >= WINDOW {
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
