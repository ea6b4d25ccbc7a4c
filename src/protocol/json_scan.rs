//! The JSON lexer behind the request peeks: it answers questions about a KServe v2 JSON
//! infer request from whatever prefix of the body has arrived, without buffering tensors.
//!
//! A query ([`json_batch`](super::json_batch), [`sequence`](super::sequence)) walks the path
//! it cares about with [`Scanner`]; every other value is skipped. Scanning allocates nothing,
//! never recurses, and stops as soon as the query's answer is settled, so the tensor `data`
//! that usually follows is never visited unless the answer lies beyond it.
//!
//! # How closely this follows Triton
//!
//! Triton parses requests with rapidjson, so the scanner mirrors that parser where it decides
//! the answer for a document Triton would accept:
//!
//! * When a key occurs twice, the first occurrence wins (rapidjson's member lookup is a
//!   linear search from the front); queries honour this by taking the first match.
//! * `NaN`, `Inf`, `Infinity` and their negations are accepted as numbers in skipped values,
//!   because Triton enables rapidjson's NaN/Inf extension; they never count as an answer.
//! * Comments and trailing commas are rejected, as Triton does not enable those extensions.
//!
//! Deliberate differences, all of which only affect documents that are unusual or invalid:
//!
//! * Keys are compared after decoding their escapes, as Triton reads them: `"inp\u0075ts"`
//!   is `inputs`, so escaping a key cannot hide an answer.
//! * UTF-8 is not validated except in strings a query decodes; a document that is malformed
//!   only in that way gets an answer and the upstream rejects it.
//! * Bracket kinds are checked only in the outermost 4096 levels of a skipped
//!   value, because checking them at any depth would need unbounded memory. Deeper levels
//!   are only counted, so arbitrarily deep nesting is still skipped in O(n) without
//!   allocation; mismatched brackets there go unnoticed and the upstream rejects them.
//! * Once the answer is known the rest of the document is not checked.
//!
//! A scan keeps no state between calls, so a caller that retries after each new chunk
//! rescans from the start; bounding the prefix it is willing to buffer bounds that cost.

/// One unit of a JSON string's contents once its escapes are undone: a byte of the raw
/// text or of a simple escape, or the UTF-16 code unit of a `\u` escape.
enum Unit {
    Byte(u8),
    Utf16(u16),
}

/// The decoded units of raw string contents that [`Scanner`] has already validated.
fn unescape(raw: &[u8]) -> impl Iterator<Item = Unit> + '_ {
    let mut rest = raw;
    std::iter::from_fn(move || {
        let (&byte, tail) = rest.split_first()?;
        let (unit, tail) = match (byte, tail) {
            (b'\\', [b'u', a, b, c, d, tail @ ..]) => {
                let code = [a, b, c, d].iter().try_fold(0u16, |code, &&digit| {
                    let value = char::from(digit).to_digit(16)?;
                    Some(code << 4 | u16::try_from(value).ok()?)
                })?;
                (Unit::Utf16(code), tail)
            }
            (b'\\', [escaped, tail @ ..]) => {
                let decoded = match escaped {
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    other => *other,
                };
                (Unit::Byte(decoded), tail)
            }
            _ => (Unit::Byte(byte), tail),
        };
        rest = tail;
        Some(unit)
    })
}

/// Whether the raw (already validated) JSON string contents `raw` decode to the ASCII
/// `name`, without allocating.
pub(super) fn key_is(raw: &[u8], name: &[u8]) -> bool {
    let mut wanted = name.iter();
    unescape(raw).all(|unit| {
        let decoded = match unit {
            Unit::Byte(byte) => Some(byte),
            // A non-ASCII character cannot be part of an ASCII name.
            Unit::Utf16(code) => u8::try_from(code).ok().filter(u8::is_ascii),
        };
        decoded.is_some() && wanted.next().copied() == decoded
    }) && wanted.next().is_none()
}

/// The bytes raw (already validated) JSON string contents decode to, or `None` when a `\u`
/// escape is a surrogate without its pair, which rapidjson rejects. The result is not
/// checked to be UTF-8: neither is the rest of the document.
pub(super) fn unescaped(raw: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut units = unescape(raw);
    while let Some(unit) = units.next() {
        let code = match unit {
            Unit::Byte(byte) => {
                bytes.push(byte);
                continue;
            }
            Unit::Utf16(high @ 0xD800..=0xDBFF) => match units.next() {
                Some(Unit::Utf16(low @ 0xDC00..=0xDFFF)) => {
                    0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                }
                _ => return None,
            },
            Unit::Utf16(code) => u32::from(code),
        };
        // Fails exactly for a lone low surrogate.
        let decoded = char::from_u32(code)?;
        bytes.extend_from_slice(decoded.encode_utf8(&mut [0; 4]).as_bytes());
    }
    Some(bytes)
}

/// Runs `query` over `prefix`, a prefix of a JSON document that is the whole document when
/// `complete`, and reports how many bytes it read, so tests can check that a scan stops
/// early and that a verdict depends only on the bytes read.
pub(super) fn run<T>(
    prefix: &[u8],
    complete: bool,
    query: impl FnOnce(&mut Scanner<'_>) -> Step<T>,
) -> (Step<T>, usize) {
    let mut scanner = Scanner {
        input: prefix,
        pos: 0,
        complete,
        nesting: Nesting {
            depth: 0,
            objects: [0; TRACKED_DEPTH / 64],
        },
    };
    let verdict = query(&mut scanner);
    (verdict, scanner.pos)
}

/// Nesting levels of a skipped value whose bracket kind is remembered; 4096 levels cost a
/// 512-byte bit set on the stack, far beyond anything a real request contains.
pub(super) const TRACKED_DEPTH: usize = 4096;

/// Why a scan ended without the query's answer.
pub(super) enum Halt {
    /// The document does not hold the answer, or is malformed. Final.
    Absent,
    /// The prefix ends before the answer; more bytes may settle it.
    NeedMore,
}

/// `Err` ends the whole scan, which lets `?` unwind every level at once.
pub(super) type Step<T> = Result<T, Halt>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
    /// Deeper than [`TRACKED_DEPTH`]: either kind is accepted.
    Untracked,
}

/// The open containers of the value being skipped, kept as a bit set instead of a `Vec` so
/// that skipping never allocates.
struct Nesting {
    depth: usize,
    /// Bit `i` is set when level `i` (0 = outermost) is an object.
    objects: [u64; TRACKED_DEPTH / 64],
}

impl Nesting {
    fn push(&mut self, is_object: bool) {
        if self.depth < TRACKED_DEPTH {
            let bit = 1u64 << (self.depth % 64);
            let word = &mut self.objects[self.depth / 64];
            if is_object {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }

    /// Only meaningful while `depth > 0`.
    fn top(&self) -> Container {
        let level = self.depth - 1;
        if level >= TRACKED_DEPTH {
            Container::Untracked
        } else if self.objects[level / 64] & (1u64 << (level % 64)) != 0 {
            Container::Object
        } else {
            Container::Array
        }
    }
}

/// A cursor over a JSON prefix that queries steer; see [`run`].
pub(super) struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    complete: bool,
    nesting: Nesting,
}

impl<'a> Scanner<'a> {
    /// Running out of bytes is only final when the caller says nothing follows; a
    /// truncated document is malformed.
    fn starved(&self) -> Halt {
        if self.complete {
            Halt::Absent
        } else {
            Halt::NeedMore
        }
    }

    fn next_byte(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn peek(&self) -> Step<u8> {
        self.next_byte().ok_or_else(|| self.starved())
    }

    /// Consumes even a byte that turns out to be wrong, so that the reported stop position
    /// covers every byte a verdict depends on.
    pub(super) fn bump(&mut self) -> Step<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Ok(byte)
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.next_byte() {
            self.pos += 1;
        }
    }

    /// The next byte after any whitespace, left unconsumed.
    pub(super) fn peek_token(&mut self) -> Step<u8> {
        self.skip_ws();
        self.peek()
    }

    fn bump_token(&mut self) -> Step<u8> {
        self.skip_ws();
        self.bump()
    }

    /// Consumes the next byte after any whitespace; Absent unless it is `want`.
    pub(super) fn expect_token(&mut self, want: u8) -> Step<()> {
        if self.bump_token()? == want {
            Ok(())
        } else {
            Err(Halt::Absent)
        }
    }

    /// Reads an object's `{` and its first key through the `:` after it, returning the key's
    /// raw contents, or `None` (past the `}`) for an empty object. Anything but an object is
    /// Absent.
    pub(super) fn open_object(&mut self) -> Step<Option<&'a [u8]>> {
        self.expect_token(b'{')?;
        if self.peek_token()? == b'}' {
            self.pos += 1;
            return Ok(None);
        }
        self.member_name().map(Some)
    }

    /// Called after a member's value: reads the next key through its `:` like
    /// [`open_object`](Self::open_object), or `None` past the object's `}`.
    pub(super) fn next_key(&mut self) -> Step<Option<&'a [u8]>> {
        match self.bump_token()? {
            b',' => self.member_name().map(Some),
            b'}' => Ok(None),
            _ => Err(Halt::Absent),
        }
    }

    /// Reads an object up to just after the `:` of its first member named `name`, skipping
    /// the members before it. Absent when the object has no such member: which value
    /// follows a missing member is not for this scan to judge.
    ///
    /// Keys are compared after decoding their escapes, as Triton sees them.
    pub(super) fn find_member(&mut self, name: &[u8]) -> Step<()> {
        let mut key = self.open_object()?;
        while let Some(raw) = key {
            if key_is(raw, name) {
                return Ok(());
            }
            self.skip_value()?;
            key = self.next_key()?;
        }
        Err(Halt::Absent)
    }

    /// Reads a string value, returning its raw (undecoded but validated) contents.
    pub(super) fn string(&mut self) -> Step<&'a [u8]> {
        self.expect_token(b'"')?;
        let start = self.pos;
        self.string_rest()?;
        Ok(&self.input[start..self.pos - 1])
    }

    /// Reads a `true` or `false` value.
    pub(super) fn boolean(&mut self) -> Step<bool> {
        match self.bump_token()? {
            b't' => self.literal(b"rue").map(|()| true),
            b'f' => self.literal(b"alse").map(|()| false),
            _ => Err(Halt::Absent),
        }
    }

    /// Reads a non-negative integer literal that fits in a `u64`, the form rapidjson reports
    /// as `IsUint64`; any other number, or any other value, is Absent. The byte after the
    /// digits must be seen first, since `12` may still grow into `123`, `12.5` or `12e3`;
    /// it is left for the caller to judge unless it continues the number.
    pub(super) fn unsigned_integer(&mut self) -> Step<u64> {
        let first = self.bump_token()?;
        if !first.is_ascii_digit() {
            return Err(Halt::Absent);
        }
        let mut value = u64::from(first - b'0');
        // JSON forbids leading zeros, so after `0` a digit is not part of this number and the
        // caller rejects it.
        if first != b'0' {
            while let Some(digit @ b'0'..=b'9') = self.next_byte() {
                self.pos += 1;
                // More digits can only make an overflowing literal larger, so this is final.
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(digit - b'0')))
                    .ok_or(Halt::Absent)?;
            }
        }
        match self.peek()? {
            b'.' | b'e' | b'E' => {
                self.pos += 1;
                Err(Halt::Absent)
            }
            _ => Ok(value),
        }
    }

    /// Skips one complete JSON value, validating it. Iterative so that nesting depth is
    /// bounded only by the input, not by the call stack.
    pub(super) fn skip_value(&mut self) -> Step<()> {
        'value: loop {
            match self.bump_token()? {
                b'{' => {
                    self.nesting.push(true);
                    if self.peek_token()? == b'}' {
                        self.pos += 1;
                        self.nesting.pop();
                    } else {
                        self.member_name()?;
                        continue 'value;
                    }
                }
                b'[' => {
                    self.nesting.push(false);
                    if self.peek_token()? == b']' {
                        self.pos += 1;
                        self.nesting.pop();
                    } else {
                        continue 'value;
                    }
                }
                b'"' => {
                    self.string_rest()?;
                }
                b't' => self.literal(b"rue")?,
                b'f' => self.literal(b"alse")?,
                b'n' => self.literal(b"ull")?,
                b'N' => self.literal(b"aN")?,
                b'I' => self.infinity()?,
                b'-' => self.number_after_sign()?,
                first @ b'0'..=b'9' => self.number_rest(first)?,
                _ => return Err(Halt::Absent),
            }
            // A value just ended; close every container that ends with it.
            while self.nesting.depth > 0 {
                match (self.bump_token()?, self.nesting.top()) {
                    (b',', Container::Object) => {
                        self.member_name()?;
                        continue 'value;
                    }
                    // Past the tracked depth an object's `"key": value` is read as two
                    // values separated by `:`, which accepts every valid document.
                    (b',', _) | (b':', Container::Untracked) => continue 'value,
                    (b'}', Container::Object | Container::Untracked)
                    | (b']', Container::Array | Container::Untracked) => self.nesting.pop(),
                    _ => return Err(Halt::Absent),
                }
            }
            return Ok(());
        }
    }

    /// Reads a key through the `:` after it, returning its raw contents.
    fn member_name(&mut self) -> Step<&'a [u8]> {
        let key = self.string()?;
        self.expect_token(b':')?;
        Ok(key)
    }

    /// Consumes a string whose opening quote is already consumed, through its closing quote.
    fn string_rest(&mut self) -> Step<()> {
        loop {
            let rest = &self.input[self.pos..];
            let Some(offset) = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            else {
                self.pos = self.input.len();
                return Err(self.starved());
            };
            self.pos += offset + 1;
            match rest[offset] {
                b'"' => return Ok(()),
                b'\\' => self.escape()?,
                // JSON requires control characters inside strings to be escaped.
                _ => return Err(Halt::Absent),
            }
        }
    }

    fn escape(&mut self) -> Step<()> {
        match self.bump()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                for _ in 0..4 {
                    if !self.bump()?.is_ascii_hexdigit() {
                        return Err(Halt::Absent);
                    }
                }
                Ok(())
            }
            _ => Err(Halt::Absent),
        }
    }

    fn literal(&mut self, rest: &[u8]) -> Step<()> {
        for &want in rest {
            if self.bump()? != want {
                return Err(Halt::Absent);
            }
        }
        Ok(())
    }

    /// After `I`: rapidjson reads `Inf`, and if an `i` follows insists on `Infinity`.
    fn infinity(&mut self) -> Step<()> {
        self.literal(b"nf")?;
        if self.next_byte() == Some(b'i') {
            self.pos += 1;
            self.literal(b"nity")?;
        }
        Ok(())
    }

    fn number_after_sign(&mut self) -> Step<()> {
        match self.bump()? {
            b'N' => self.literal(b"aN"),
            b'I' => self.infinity(),
            first @ b'0'..=b'9' => self.number_rest(first),
            _ => Err(Halt::Absent),
        }
    }

    /// Consumes the rest of a number whose first digit is consumed. The number may end at
    /// the end of the input: the enclosing object still needs its `}`, so whatever byte
    /// comes next is judged by the caller, and a missing one means NeedMore.
    fn number_rest(&mut self, first: u8) -> Step<()> {
        // After a leading `0` a digit is not part of this number; the caller rejects it.
        if first != b'0' {
            self.skip_digits();
        }
        if self.next_byte() == Some(b'.') {
            self.pos += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.next_byte() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.next_byte() {
                self.pos += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    /// One or more digits.
    fn digits(&mut self) -> Step<()> {
        if !self.bump()?.is_ascii_digit() {
            return Err(Halt::Absent);
        }
        self.skip_digits();
        Ok(())
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.next_byte() {
            self.pos += 1;
        }
    }
}
