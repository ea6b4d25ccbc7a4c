//! Checks shared by the tests of the request peeks, which all promise the same things about
//! prefixes whatever question they answer.

use std::fmt::Debug;

/// A peek's verdict, so that the prefix checks below serve every query.
pub(super) trait Verdict: PartialEq + Debug + Clone {
    /// More bytes may settle the answer.
    const NEED_MORE: Self;
    /// Final: no answer.
    const ABSENT: Self;
}

/// Checks every prefix of a document against its full answer: an incomplete prefix either
/// waits or already gives the final answer, and a prefix declared complete never waits and
/// never contradicts the answer.
pub(super) fn assert_prefixes_consistent<T: Verdict>(
    peek: impl Fn(&[u8], bool) -> T,
    doc: &[u8],
    answer: &T,
) {
    assert_eq!(&peek(doc, true), answer, "full {:?}", show(doc));
    for cut in 0..=doc.len() {
        let prefix = &doc[..cut];
        let open = peek(prefix, false);
        assert!(
            open == T::NEED_MORE || &open == answer,
            "prefix {:?} of {:?} gave {open:?}, full answer {answer:?}",
            show(prefix),
            show(doc),
        );
        let closed = peek(prefix, true);
        assert!(
            &closed == answer || closed == T::ABSENT,
            "complete prefix {:?} gave {closed:?}",
            show(prefix),
        );
        if open != T::NEED_MORE {
            assert_eq!(closed, open, "prefix {:?}", show(prefix));
        }
    }
}

/// Properties every input must satisfy, valid or not, checked with a `scan` that also
/// reports how many bytes it read: determinism, a verdict on a prefix is never revised by
/// more bytes, `complete` never waits, and a verdict depends only on the bytes read.
pub(super) fn assert_sound<T: Verdict>(
    scan: impl Fn(&[u8], bool) -> (T, usize),
    doc: &[u8],
    cuts: impl IntoIterator<Item = usize>,
) {
    let peek = |prefix: &[u8], complete| scan(prefix, complete).0;
    let (full_open, read) = scan(doc, false);
    let full_closed = peek(doc, true);
    assert_eq!(
        scan(doc, false),
        (full_open.clone(), read),
        "{:?}",
        show(doc)
    );
    assert_ne!(full_closed, T::NEED_MORE, "{:?}", show(doc));
    assert!(read <= doc.len());
    if full_open != T::NEED_MORE {
        assert_eq!(full_closed, full_open, "{:?}", show(doc));
        assert_eq!(peek(&doc[..read], false), full_open, "{:?}", show(doc));
    }
    for cut in cuts {
        let prefix = &doc[..cut];
        let open = peek(prefix, false);
        let closed = peek(prefix, true);
        assert_ne!(closed, T::NEED_MORE, "{:?}", show(prefix));
        if open != T::NEED_MORE {
            assert_eq!(
                open,
                full_open,
                "prefix {:?} of {:?}",
                show(prefix),
                show(doc)
            );
            assert_eq!(closed, open, "{:?}", show(prefix));
        }
    }
}

/// A document for an assertion message, cut short when long.
pub(super) fn show(bytes: &[u8]) -> String {
    if bytes.len() > 300 {
        let head = String::from_utf8_lossy(&bytes[..300]);
        format!("{head}…({} bytes)", bytes.len())
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// xorshift64*: deterministic, so any failure reproduces.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub(super) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Damages a document in a few random places: flipped, replaced, removed, inserted or
/// duplicated bytes, or a cut.
pub(super) fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"{}[]\":,\\ 0189-.eEtnNI\x00\x1f\x80\xff";
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(doc.len() + 1);
        match rng.below(6) {
            0 if at < doc.len() => doc[at] ^= 1 << rng.below(8),
            1 if at < doc.len() => doc[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 if at < doc.len() => {
                doc.remove(at);
            }
            3 => doc.truncate(at),
            4 => doc.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            _ => {
                let from = rng.below(doc.len() + 1);
                let to = (from + rng.below(12)).min(doc.len());
                let span = doc[from..to].to_vec();
                doc.splice(at..at, span);
            }
        }
    }
}

/// Appends `v` as a protobuf varint.
pub(super) fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited protobuf field.
pub(super) fn string_field(number: u32, value: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(number) << 3 | 2, out);
    varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// A gRPC length-prefixed message; `flag` 1 marks it compressed.
pub(super) fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}
