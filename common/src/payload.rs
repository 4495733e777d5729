//! Message bodies that a receiver can check without trusting the sender.
//!
//! Message number `seq` of `size` bytes is always the same bytes:
//!
//! ```text
//! +--------------------+-----------------------------------------+
//! | seq: u64, little-  | 64-bit words start + k*step, with start |
//! | endian, 8 bytes    | and step mixed from (seq, size)         |
//! +--------------------+-----------------------------------------+
//! ```
//!
//! The receiver recomputes the body from the `seq` it finds and the length
//! it got, and compares. Because the seed includes the size, a message cut
//! short does not pass as a shorter valid one. [`Checker`] then sorts every
//! problem into one of four kinds, counted separately:
//!
//! - **lost**: a number that never arrived;
//! - **duplicated**: a number that arrived twice;
//! - **reordered**: a number that arrived after a higher one;
//! - **corrupted**: bytes that do not match, a body too short to carry a
//!   number, or a number outside the expected range.

use std::collections::BTreeSet;
use std::fmt;

/// Smallest body: the 8-byte sequence number.
pub const MIN_SIZE: usize = 8;

/// Fill `buf` with the body of message `seq` (its size is `buf.len()`).
/// Writing into the caller's buffer lets shared memory build a message in
/// place. A `buf` shorter than [`MIN_SIZE`] gets the first bytes of `seq`.
pub fn fill(seq: u64, buf: &mut [u8]) {
    fill_at(seq, buf.len(), 0, buf);
}

/// Fill `buf` with bytes `offset..offset + buf.len()` of the body of message
/// `seq` of `size` bytes: a message split across several slots is written
/// piece by piece, straight into each slot.
pub fn fill_at(seq: u64, size: usize, offset: usize, buf: &mut [u8]) {
    let words = Words::new(seq, size);
    let (mut pos, mut out) = (offset, 0);
    // The common case, a body from its start: the number in one copy.
    if offset == 0 && buf.len() >= MIN_SIZE {
        buf[..MIN_SIZE].copy_from_slice(&seq.to_le_bytes());
        (pos, out) = (MIN_SIZE, MIN_SIZE);
    }
    // The sequence number, and a word cut by `offset`, byte by byte.
    while out < buf.len() && (pos < MIN_SIZE || !(pos - MIN_SIZE).is_multiple_of(8)) {
        buf[out] = byte_at(seq, &words, pos);
        pos += 1;
        out += 1;
    }
    if out == buf.len() {
        return;
    }
    // Then whole words: one addition each, which the compiler vectorises.
    let mut word = words.word(((pos - MIN_SIZE) / 8) as u64);
    let mut chunks = buf[out..].chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word.to_le_bytes());
        word = word.wrapping_add(words.step);
    }
    let tail = chunks.into_remainder();
    let len = tail.len();
    tail.copy_from_slice(&word.to_le_bytes()[..len]);
}

fn byte_at(seq: u64, words: &Words, pos: usize) -> u8 {
    if pos < MIN_SIZE {
        seq.to_le_bytes()[pos]
    } else {
        words.word(((pos - MIN_SIZE) / 8) as u64).to_le_bytes()[(pos - MIN_SIZE) % 8]
    }
}

/// The body of message `seq`, `size` bytes long.
pub fn make(seq: u64, size: usize) -> Vec<u8> {
    let mut body = vec![0u8; size];
    fill(seq, &mut body);
    body
}

/// The sequence number a body claims, if it is long enough to carry one.
pub fn seq_of(body: &[u8]) -> Option<u64> {
    let head: [u8; MIN_SIZE] = body.get(..MIN_SIZE)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// The words after the sequence number: word `k` is `start + k * step`
/// (wrapping), with `start` and an odd `step` mixed from (seq, size) by the
/// SplitMix64 finaliser. An arithmetic progression costs one addition per
/// word, so generating and checking keep up with fast mechanisms, and it
/// still gives every message, position and size its own bytes: a lost,
/// swapped, cut or corrupted message cannot pass. It is not random, and
/// need not be.
struct Words {
    start: u64,
    step: u64,
}

impl Words {
    fn new(seq: u64, size: usize) -> Self {
        let start = mix(seq ^ (size as u64).rotate_left(32) ^ 0x6970_632d_6578_616d);
        let step = mix(start ^ 0x9E37_79B9_7F4A_7C15) | 1;
        Words { start, step }
    }

    fn word(&self, k: u64) -> u64 {
        self.start.wrapping_add(k.wrapping_mul(self.step))
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the checker concluded about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Intact, first arrival, no higher number seen before it.
    Ok,
    /// Intact, but a higher number arrived first.
    Reordered,
    /// Intact, but this number arrived before.
    Duplicated,
    /// The bytes are wrong; the reason says how.
    Corrupted(&'static str),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => f.write_str("ok"),
            Verdict::Reordered => f.write_str("reordered"),
            Verdict::Duplicated => f.write_str("duplicated"),
            Verdict::Corrupted(why) => write!(f, "corrupted ({why})"),
        }
    }
}

/// Checks a stream of bodies numbered from 0.
#[derive(Debug)]
pub struct Checker {
    /// How many messages should arrive, if the receiver knows.
    expected: Option<u64>,
    /// Every number below this one has arrived.
    contiguous: u64,
    /// Numbers at or above `contiguous` that arrived (only the out-of-order
    /// ones stay here, so memory follows the disorder, not the count).
    ahead: BTreeSet<u64>,
    highest: Option<u64>,
    report: CheckReport,
}

/// Counts after checking; [`errors`](Self::errors) is their sum of problems.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Messages handed to the checker.
    pub received: u64,
    /// Bytes handed to the checker.
    pub bytes: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
}

impl CheckReport {
    /// All problems together.
    pub fn errors(&self) -> u64 {
        self.lost + self.duplicated + self.reordered + self.corrupted
    }

    /// Add another checker's counts to these (one report for many peers).
    pub fn merge(&mut self, other: &CheckReport) {
        self.received += other.received;
        self.bytes += other.bytes;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.corrupted += other.corrupted;
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} lost={} duplicated={} reordered={} corrupted={}",
            self.received, self.lost, self.duplicated, self.reordered, self.corrupted
        )
    }
}

impl Checker {
    /// `expected`: the number of messages that should arrive (numbers
    /// `0..expected`), or `None` when the receiver reads until the end and
    /// only gaps below the highest number can count as lost.
    pub fn new(expected: Option<u64>) -> Self {
        Checker {
            expected,
            contiguous: 0,
            ahead: BTreeSet::new(),
            highest: None,
            report: CheckReport::default(),
        }
    }

    /// Check one body; its sequence number is its first 8 bytes.
    pub fn check(&mut self, body: &[u8]) -> Verdict {
        self.check_inner(seq_of(body), body)
    }

    /// Check one body whose sequence number the transport carried beside
    /// it (e.g. in a shared-memory slot header), for bodies of any size,
    /// even shorter than 8 bytes. The body must still agree with `seq`.
    pub fn check_numbered(&mut self, seq: u64, body: &[u8]) -> Verdict {
        if seq_of(body).is_some_and(|inside| inside != seq) {
            self.report.received += 1;
            self.report.bytes += body.len() as u64;
            self.report.corrupted += 1;
            return Verdict::Corrupted("sequence number differs from the one in the body");
        }
        self.check_inner(Some(seq), body)
    }

    fn check_inner(&mut self, seq: Option<u64>, body: &[u8]) -> Verdict {
        self.report.received += 1;
        self.report.bytes += body.len() as u64;
        let verdict = self.classify(seq, body);
        match verdict {
            Verdict::Ok => {}
            Verdict::Reordered => self.report.reordered += 1,
            Verdict::Duplicated => self.report.duplicated += 1,
            Verdict::Corrupted(_) => self.report.corrupted += 1,
        }
        verdict
    }

    fn classify(&mut self, seq: Option<u64>, body: &[u8]) -> Verdict {
        let Some(seq) = seq else {
            return Verdict::Corrupted("shorter than the 8-byte sequence number");
        };
        if self.expected.is_some_and(|n| seq >= n) {
            return Verdict::Corrupted("sequence number out of range");
        }
        if !matches_body(seq, body) {
            return Verdict::Corrupted("bytes differ from the expected body");
        }
        // The common case, the next number with nothing ahead of it: no set
        // to touch (and nothing higher can have arrived before it).
        if seq == self.contiguous && self.ahead.is_empty() {
            self.contiguous += 1;
            self.highest = Some(seq);
            return Verdict::Ok;
        }
        if seq < self.contiguous || self.ahead.contains(&seq) {
            return Verdict::Duplicated;
        }
        self.ahead.insert(seq);
        while self.ahead.remove(&self.contiguous) {
            self.contiguous += 1;
        }
        let late = self.highest.is_some_and(|h| seq < h);
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        if late {
            Verdict::Reordered
        } else {
            Verdict::Ok
        }
    }

    /// The counts so far, with `lost` computed from what never arrived.
    pub fn report(&self) -> CheckReport {
        let arrived = self.contiguous + self.ahead.len() as u64;
        let should = match (self.expected, self.highest) {
            (Some(n), _) => n,
            (None, Some(h)) => h + 1,
            (None, None) => 0,
        };
        CheckReport {
            lost: should.saturating_sub(arrived),
            ..self.report
        }
    }
}

/// Compare without allocating, word by word. The differences are OR-ed
/// together instead of stopping at the first one: a loop without an early
/// exit is one the compiler can vectorise.
fn matches_body(seq: u64, body: &[u8]) -> bool {
    let head = body.len().min(MIN_SIZE);
    let same_number = match body.first_chunk::<MIN_SIZE>() {
        Some(first) => u64::from_le_bytes(*first) == seq,
        None => body[..head] == seq.to_le_bytes()[..head],
    };
    if !same_number {
        return false;
    }
    let words = Words::new(seq, body.len());
    let mut chunks = body[head..].chunks_exact(8);
    let mut word = words.start;
    let mut diff = 0u64;
    for chunk in &mut chunks {
        diff |= u64::from_le_bytes(chunk.try_into().expect("8 bytes")) ^ word;
        word = word.wrapping_add(words.step);
    }
    let tail = chunks.remainder();
    diff == 0 && tail == &word.to_le_bytes()[..tail.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_deterministic_and_distinct() {
        assert_eq!(make(3, 64), make(3, 64));
        assert_ne!(make(3, 64), make(4, 64));
        assert_eq!(seq_of(&make(42, 100)), Some(42));
        // Same seq, different size: the tail differs, not just the length.
        assert_ne!(&make(1, 64)[..32], &make(1, 32)[..]);
        assert_eq!(make(7, 3), 7u64.to_le_bytes()[..3].to_vec());
    }

    #[test]
    fn in_order_is_clean() {
        let mut c = Checker::new(Some(100));
        for seq in 0..100 {
            assert_eq!(c.check(&make(seq, 8 + (seq as usize % 50))), Verdict::Ok);
        }
        let r = c.report();
        assert_eq!(r.errors(), 0);
        assert_eq!(r.received, 100);
    }

    #[test]
    fn each_problem_is_counted_separately() {
        let mut c = Checker::new(Some(6));
        assert_eq!(c.check(&make(0, 64)), Verdict::Ok);
        assert_eq!(c.check(&make(2, 64)), Verdict::Ok); // 1 skipped for now
        assert_eq!(c.check(&make(1, 64)), Verdict::Reordered);
        assert_eq!(c.check(&make(2, 64)), Verdict::Duplicated);
        let mut bad = make(3, 64);
        bad[40] ^= 1;
        assert!(matches!(c.check(&bad), Verdict::Corrupted(_)));
        assert!(matches!(c.check(&make(9, 64)), Verdict::Corrupted(_)));
        assert!(matches!(c.check(&[1, 2, 3]), Verdict::Corrupted(_)));
        assert_eq!(c.check(&make(5, 64)), Verdict::Ok);
        // 3 (corrupted copy only) and 4 never arrived intact.
        let r = c.report();
        assert_eq!(
            (r.lost, r.duplicated, r.reordered, r.corrupted),
            (2, 1, 1, 3)
        );
        assert_eq!(r.errors(), 7);
        assert_eq!(r.received, 8);
    }

    #[test]
    fn pieces_match_the_whole() {
        let whole = make(9, 1000);
        let mut pieces = vec![0u8; 1000];
        for (i, chunk) in pieces.chunks_mut(77).enumerate() {
            fill_at(9, 1000, i * 77, chunk);
        }
        assert_eq!(pieces, whole);
    }

    proptest::proptest! {
        #[test]
        fn any_piece_matches_and_any_flip_is_caught(seq in 0u64..1000, size in 1usize..300,
                                                    cut in 0usize..300, flip in 0usize..300) {
            let whole = make(seq, size);
            let cut = cut.min(size);
            let mut pieces = vec![0u8; size];
            fill_at(seq, size, 0, &mut pieces[..cut]);
            fill_at(seq, size, cut, &mut pieces[cut..]);
            proptest::prop_assert_eq!(&pieces, &whole);
            proptest::prop_assert!(matches_body(seq, &whole));
            let mut bad = whole.clone();
            bad[flip % size] ^= 0x40;
            proptest::prop_assert!(!matches_body(seq, &bad));
            // A body of another message or another length does not pass.
            proptest::prop_assert!(!matches_body(seq + 1, &whole) || size < MIN_SIZE && seq.to_le_bytes()[..size] == (seq + 1).to_le_bytes()[..size]);
        }
    }

    #[test]
    fn numbered_bodies_of_any_size() {
        let mut c = Checker::new(Some(20));
        for size in 1..20usize {
            let seq = size as u64 - 1;
            assert_eq!(
                c.check_numbered(seq, &make(seq, size)),
                Verdict::Ok,
                "size {size}"
            );
        }
        // A 3-byte body of message 19 is not a body of message 18.
        assert!(matches!(
            c.check_numbered(18, &make(19, 3)),
            Verdict::Corrupted(_)
        ));
        // The number inside a long body must agree with the one beside it.
        assert!(matches!(
            c.check_numbered(19, &make(5, 64)),
            Verdict::Corrupted(_)
        ));
        assert_eq!(c.check_numbered(19, &make(19, 64)), Verdict::Ok);
        assert_eq!(c.report().errors(), 2);
    }

    #[test]
    fn truncated_body_is_corrupted() {
        let body = make(5, 64);
        let mut c = Checker::new(None);
        assert!(matches!(c.check(&body[..40]), Verdict::Corrupted(_)));
    }

    #[test]
    fn unknown_count_counts_gaps_as_lost() {
        let mut c = Checker::new(None);
        for seq in [0, 1, 4] {
            c.check(&make(seq, 16));
        }
        assert_eq!(c.report().lost, 2);
        assert_eq!(Checker::new(None).report().errors(), 0);
    }

    #[test]
    fn fewer_than_expected_is_lost() {
        let mut c = Checker::new(Some(10));
        c.check(&make(0, 16));
        assert_eq!(c.report().lost, 9);
    }
}
