//! The one-pass record scanner: checks that a record is valid JSON and reads the fields the
//! relay needs while finding where the record ends, without serde's per-field machinery. JSON
//! was half of the relay's CPU at ingest; this reads records about 1.5× as fast as serde_json
//! did in one pass (`cargo bench --bench relay -- parse`).
//!
//! It accepts a subset of what the reference parser (`record::parse_batch_checked`) accepts,
//! with the same result, and returns `None` for everything else: that record is then read by
//! serde (and a body with an invalid record goes to the reference parser, which words the
//! error), so the scanner never has to word an error or follow serde into its corners. Out of
//! the subset, on purpose: `\u` escapes of UTF-16 surrogates (serde checks their pairing only in
//! some places), numbers serde would have to convert in a field the relay reads (an exponent, or
//! more than 20 characters: serde refuses values out of `f64`'s range there), a field given
//! twice (serde refuses), nesting deeper than [`MAX_DEPTH`], and any error. A property test and
//! the `ingest_body` fuzz target hold the two parsers to the same answers.

use std::borrow::Cow;

/// Deeper records go to the reference parser (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 64;

/// A string field's value: `None` for any other JSON value, as the reference reads it.
pub(super) type MaybeStr<'a> = Option<Cow<'a, str>>;

/// What the relay reads from a record.
#[derive(Default)]
pub(super) struct Fields<'a> {
    pub namespace: MaybeStr<'a>,
    pub pod: MaybeStr<'a>,
    pub container: MaybeStr<'a>,
    pub message: MaybeStr<'a>,
    pub log: MaybeStr<'a>,
}

/// The record (an object) starting at `pos` of `text`: its fields, its labels (appended to
/// `labels`, which the caller reuses across records), and where it ends.
pub(super) fn record<'a>(
    text: &'a str,
    pos: usize,
    labels: &mut Vec<(Cow<'a, str>, MaybeStr<'a>)>,
) -> Option<(Fields<'a>, usize)> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        pos,
    };
    let mut fields = Fields::default();
    let (mut message, mut log, mut kubernetes) = (false, false, false);
    s.object(|s, key| {
        match key.as_ref() {
            "message" => {
                once(&mut message)?;
                fields.message = s.maybe_str()?;
            }
            "log" => {
                once(&mut log)?;
                fields.log = s.maybe_str()?;
            }
            "kubernetes" => {
                once(&mut kubernetes)?;
                s.kubernetes(&mut fields, labels)?;
            }
            _ => s.skip(1)?,
        }
        Some(())
    })?;
    Some((fields, s.pos))
}

/// Where the first `"`, `\\` or control character of `b` is: sixteen bytes at a time with
/// SSE2 (part of every x86_64 CPU), then eight at a time, then one.
fn special(b: &[u8]) -> Option<usize> {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    while done + 16 <= b.len() {
        use std::arch::x86_64::*;
        // SAFETY: the 16 bytes loaded are inside `b` (checked above); SSE2 is in the x86_64
        // baseline, so these instructions exist on every CPU this code runs on.
        let found = unsafe {
            let x = _mm_loadu_si128(b.as_ptr().add(done).cast());
            let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
            // Unsigned x < 0x20 exactly when max(x, 0x1f) is 0x1f.
            let low = _mm_set1_epi8(0x1f);
            let control = _mm_cmpeq_epi8(_mm_max_epu8(x, low), low);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
        };
        if found != 0 {
            return Some(done + found.trailing_zeros() as usize);
        }
        done += 16;
    }
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = b[done..].chunks_exact(8);
    for chunk in chunks.by_ref() {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // Bytes below 0x20, and bytes equal to `"` or `\\`; the lowest flagged byte is exact
        // (borrows only run towards higher bytes).
        let found = (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | has_zero(x ^ (ONES * b'"' as u64))
            | has_zero(x ^ (ONES * b'\\' as u64));
        if found != 0 {
            return Some(done + found.trailing_zeros() as usize / 8);
        }
        done += 8;
    }
    b[done..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| done + i)
}

/// Marks a field as seen; `None` the second time (serde refuses a field given twice).
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.pos..].starts_with(word).then(|| self.pos += word.len())
    }

    /// An object at `pos`; `entry` reads each value, given the scanner (at the value) and the
    /// decoded key.
    fn object(&mut self, mut entry: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            entry(self, key)?;
            if self.closed(b'}')? {
                return Some(());
            }
        }
    }

    /// After an element of an object or array: `true` past `close` (the last element),
    /// `false` past a `,` (another follows), `None` for anything else.
    fn closed(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = self.peek()?;
        self.pos += 1;
        match c {
            b',' => {
                self.ws();
                Some(false)
            }
            _ if c == close => Some(true),
            _ => None,
        }
    }

    /// A string at `pos`, decoded; borrowed from the text unless it has escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let open = self.pos;
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            let i = self.pos + special(&self.b[self.pos..])?;
            match self.b[i] {
                b'"' => {
                    self.pos = i + 1;
                    return if escaped {
                        // Rare in records; serde_json decodes them exactly as the reference does.
                        serde_json::from_str(&self.text[open..self.pos]).ok().map(Cow::Owned)
                    } else {
                        Some(Cow::Borrowed(&self.text[open + 1..i]))
                    };
                }
                b'\\' => {}
                // A raw control character, which JSON forbids in strings.
                _ => return None,
            }
            escaped = true;
            self.pos = match *self.b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i + 2,
                b'u' => {
                    let hex = std::str::from_utf8(self.b.get(i + 2..i + 6)?).ok()?;
                    if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                        return None;
                    }
                    let unit = u16::from_str_radix(hex, 16).ok()?;
                    if (0xD800..=0xDFFF).contains(&unit) {
                        return None;
                    }
                    i + 6
                }
                _ => return None,
            };
        }
    }

    /// A number at `pos`, by JSON's grammar; whether serde could convert it without a doubt
    /// (no exponent, at most 20 characters).
    fn number(&mut self) -> Option<bool> {
        let start = self.pos;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        let mut plain = true;
        if let Some(b'e' | b'E') = self.peek() {
            plain = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        Some(plain && self.pos - start <= 20)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// Any value at `pos`, checked and passed over.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' if depth < MAX_DEPTH => self.object(|s, _| s.skip(depth + 1))?,
            b'[' if depth < MAX_DEPTH => {
                self.pos += 1;
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    if self.closed(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => {
                self.number()?;
            }
            _ => return None,
        }
        Some(())
    }

    /// A field the relay reads as a string: the string, or `None` for any other value.
    fn maybe_str(&mut self) -> Option<MaybeStr<'a>> {
        match self.peek()? {
            b'"' => Some(Some(self.string()?)),
            b'-' | b'0'..=b'9' => self.number()?.then_some(None),
            _ => self.skip(2).map(|()| None),
        }
    }

    /// `kubernetes`: an object or `null` (anything else goes to the reference parser).
    fn kubernetes(&mut self, fields: &mut Fields<'a>, labels: &mut Vec<(Cow<'a, str>, MaybeStr<'a>)>) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        let mut seen = [false; 4];
        self.object(|s, key| {
            let slot = match key.as_ref() {
                "namespace_name" => Some((0, &mut fields.namespace)),
                "pod_name" => Some((1, &mut fields.pod)),
                "container_name" => Some((2, &mut fields.container)),
                _ => None,
            };
            if let Some((i, field)) = slot {
                once(&mut seen[i])?;
                *field = s.maybe_str()?;
            } else if key == "labels" {
                once(&mut seen[3])?;
                if s.peek()? == b'n' {
                    return s.literal(b"null");
                }
                s.object(|s, key| {
                    let value = s.maybe_str()?;
                    labels.push((key, value));
                    Some(())
                })?;
            } else {
                s.skip(2)?;
            }
            Some(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::special;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_string_search_finds_the_first_quote_backslash_or_control_character(
            // Printable and non-ASCII bytes (with the odd `"` or `\\`) of any length, so the first
            // special byte lands at every offset of the 16-, 8- and 1-byte paths.
            plain in proptest::collection::vec(0x20u8..=0xff, 0..70),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let b = [plain, tail].concat();
            let naive = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            prop_assert_eq!(special(&b), naive);
        }
    }
}
