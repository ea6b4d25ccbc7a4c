//! Peek at the batch size of a KServe v2 JSON inference request from a prefix of its body.
//!
//! The rate limiter charges a request by `inputs[0].shape[0]`, but the proxy must not buffer
//! whole tensors. [`batch_size`] therefore works on whatever prefix of the body has arrived
//! and, through the shared [`json_scan`](super::json_scan) lexer, allocates nothing, never
//! recurses, and stops reading as soon as the answer is settled, so the tensor `data` that
//! usually follows `shape` is never visited. That module describes how closely the scan
//! follows Triton's own parser.

use super::json_scan::{run, Halt, Scanner, Step};

/// The outcome of scanning the start of a JSON infer request for its batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPeek {
    /// `inputs[0].shape[0]` of the top-level object.
    Found(u64),
    /// The document has no such value, or is not a JSON object of the expected shape (the
    /// upstream will judge it). Final.
    Absent,
    /// The prefix ends before the answer; more bytes may settle it.
    NeedMore,
}

/// Finds the batch size, `inputs[0].shape[0]`, of a KServe v2 JSON infer request.
///
/// `prefix` is the start of the JSON document: for binary-tensor requests, pass the first
/// `Inference-Header-Content-Length` bytes of the body with `complete` set. `complete` means
/// no more bytes follow `prefix`; then [`BatchPeek::NeedMore`] is never returned.
///
/// Only the top-level key `"inputs"` and, inside the first element of that array, the direct
/// key `"shape"` count; equally named keys elsewhere are ignored. The first element of `shape`
/// must be a non-negative integer literal that fits in a `u64`; anything else there (a sign,
/// fraction, exponent, string, `null`, an empty array, overflow) yields [`BatchPeek::Absent`],
/// as does JSON found to be malformed before the answer. Keys match after their escapes
/// are decoded.
///
/// Runs in time linear in the bytes read, reads no further than needed to settle the answer,
/// and never allocates, recurses or panics.
pub fn batch_size(prefix: &[u8], complete: bool) -> BatchPeek {
    scan(prefix, complete).0
}

/// Like [`batch_size`], but also reports how many bytes were read, so tests can check that
/// the scan stops early and that a verdict depends only on the bytes read.
fn scan(prefix: &[u8], complete: bool) -> (BatchPeek, usize) {
    let (verdict, read) = run(prefix, complete, request);
    let peek = match verdict {
        Ok(n) => BatchPeek::Found(n),
        Err(Halt::Absent) => BatchPeek::Absent,
        Err(Halt::NeedMore) => BatchPeek::NeedMore,
    };
    (peek, read)
}

/// Walks the path `{ "inputs": [ { "shape": [ N`; every other value is skipped.
fn request(scanner: &mut Scanner<'_>) -> Step<u64> {
    scanner.find_member(b"inputs")?;
    scanner.expect_token(b'[')?;
    scanner.find_member(b"shape")?;
    scanner.expect_token(b'[')?;
    let dimension = scanner.unsigned_integer()?;
    // Only a separator proves the literal ended; the answer does not wait for the array to
    // close, since the rest of it cannot change the first element.
    match scanner.bump()? {
        b',' | b']' | b' ' | b'\t' | b'\n' | b'\r' => Ok(dimension),
        _ => Err(Halt::Absent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::json_scan::TRACKED_DEPTH;
    use crate::protocol::testing::{self, mutate, show, Rng, Verdict};
    use BatchPeek::{Absent, Found, NeedMore};

    impl Verdict for BatchPeek {
        const NEED_MORE: Self = NeedMore;
        const ABSENT: Self = Absent;
    }

    fn assert_prefixes_consistent(doc: &[u8], answer: BatchPeek) {
        testing::assert_prefixes_consistent(batch_size, doc, &answer);
    }

    fn assert_sound(doc: &[u8], cuts: impl IntoIterator<Item = usize>) {
        testing::assert_sound(scan, doc, cuts);
    }

    fn complete(doc: &str) -> BatchPeek {
        batch_size(doc.as_bytes(), true)
    }

    fn partial(doc: &str) -> BatchPeek {
        batch_size(doc.as_bytes(), false)
    }

    // ---- Typical request bodies -------------------------------------------------------

    const TRITONCLIENT_JSON: &str = r#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},{"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}],"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":false}},{"name":"OUTPUT1","parameters":{"binary_data":false}}]}"#;

    const TRITONCLIENT_BINARY: &str = r#"{"inputs":[{"name":"INPUT0","shape":[4,16],"datatype":"FP32","parameters":{"binary_data_size":256}},{"name":"INPUT1","shape":[4,16],"datatype":"FP32","parameters":{"binary_data_size":256}}],"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":true}}"#;

    const INPUTS_LAST: &str = r#"{"id":"req-\"7\"\\","parameters":{"sequence_id":3,"sequence_start":true,"inputs":[{"shape":[99]}],"shape":[98]},"outputs":[{"name":"OUT","parameters":{"classification":3}}],"inputs":[{"name":"IN","datatype":"BYTES","shape":[5,1],"data":["a","b\u00e9","c","d","e"]}]}"#;

    const DECOYS_IN_INPUT: &str = r#"{"inputs":[{"name":"x","parameters":{"shape":[100],"inputs":[{"shape":[101]}]},"datatype":"BYTES","data":["shape",["shape"],{"shape":[102]}],"shape":[2,7]},{"name":"y","shape":[103]}]}"#;

    const SPACED: &str = " \r\n\t{ \"id\" : \"a b\" ,\n \"inputs\"\t:\r\n[ \n{ \"name\" : \"INPUT0\" , \"shape\" : [ 8 , 3 , 224 , 224 ] , \"datatype\" : \"FP32\" , \"data\" : [ 1.0 , -2.5e-3 ] } ] } \n";

    #[test]
    fn typical_bodies() {
        assert_eq!(complete(TRITONCLIENT_JSON), Found(1));
        assert_eq!(complete(TRITONCLIENT_BINARY), Found(4));
        assert_eq!(complete(INPUTS_LAST), Found(5));
        assert_eq!(complete(DECOYS_IN_INPUT), Found(2));
        assert_eq!(complete(SPACED), Found(8));
        let doc = r#"{"id":"1","parameters":{"sequence_id":3},"inputs":[{"name":"INPUT0","shape":[8,3,224,224],"datatype":"FP32","data":[1.0,2.0]}],"outputs":[{"name":"OUTPUT0"}]}"#;
        assert_eq!(complete(doc), Found(8));
    }

    #[test]
    fn binary_tensor_body_json_part() {
        // The body continues with raw tensor bytes; the caller passes only the JSON part.
        let mut body = TRITONCLIENT_BINARY.as_bytes().to_vec();
        let json_len = body.len();
        body.extend((0..512u32).map(|i| (i * 37 % 256) as u8));
        assert_eq!(batch_size(&body[..json_len], true), Found(4));
        // The answer is settled long before the JSON part ends.
        assert_eq!(batch_size(&body, false), Found(4));
    }

    #[test]
    fn every_prefix_of_typical_bodies() {
        for (doc, answer) in [
            (TRITONCLIENT_JSON, Found(1)),
            (TRITONCLIENT_BINARY, Found(4)),
            (INPUTS_LAST, Found(5)),
            (DECOYS_IN_INPUT, Found(2)),
            (SPACED, Found(8)),
            (
                r#"{"inputs":[{"shape":[18446744073709551615]}]}"#,
                Found(u64::MAX),
            ),
            (r#"{"inputs":[{"shape":[18446744073709551616]}]}"#, Absent),
            (r#"{"inputs":[{"shape":[12.5]}]}"#, Absent),
            (r#"{"inputs":[{"name":"x"}],"id":"y"}"#, Absent),
            (r#"{"id":"x","parameters":{"a":[1,{"b":null}]}}"#, Absent),
            (
                r#"{"p":[NaN,-Infinity,Inf,-0.5E+2],"inputs":[{"shape":[0]}]}"#,
                Found(0),
            ),
        ] {
            assert_prefixes_consistent(doc.as_bytes(), answer);
        }
    }

    // ---- Shape values -----------------------------------------------------------------

    fn with_shape(shape: &str) -> String {
        format!(r#"{{"inputs":[{{"name":"I","shape":{shape},"datatype":"FP32"}}]}}"#)
    }

    #[test]
    fn leading_dimension_values() {
        for (shape, answer) in [
            ("[1]", Found(1)),
            ("[0]", Found(0)),
            ("[0,5]", Found(0)),
            ("[ 7 ]", Found(7)),
            ("[\n42\n,1]", Found(42)),
            ("[18446744073709551615]", Found(u64::MAX)),
            ("[18446744073709551616]", Absent),
            ("[99999999999999999999999999]", Absent),
            ("[-1]", Absent),
            ("[-0]", Absent),
            ("[8.0]", Absent),
            ("[8e0]", Absent),
            ("[8E2]", Absent),
            ("[08]", Absent),
            ("[00]", Absent),
            ("[\"8\"]", Absent),
            ("[]", Absent),
            ("[ ]", Absent),
            ("[null]", Absent),
            ("[true]", Absent),
            ("[[8]]", Absent),
            ("[{}]", Absent),
            ("[NaN]", Absent),
            ("[Infinity]", Absent),
            ("[8x]", Absent),
            ("null", Absent),
            ("8", Absent),
            ("\"8\"", Absent),
            ("{\"0\":8}", Absent),
        ] {
            let doc = with_shape(shape);
            assert_eq!(complete(&doc), answer, "shape {shape}");
            assert_prefixes_consistent(doc.as_bytes(), answer);
        }
    }

    #[test]
    fn inputs_values() {
        for (doc, answer) in [
            (r#"{"inputs":[]}"#, Absent),
            (r#"{"inputs":[ ]}"#, Absent),
            (r#"{"inputs":{}}"#, Absent),
            (r#"{"inputs":{"shape":[3]}}"#, Absent),
            (r#"{"inputs":null}"#, Absent),
            (r#"{"inputs":[[{"shape":[3]}]]}"#, Absent),
            (r#"{"inputs":[1,{"shape":[3]}]}"#, Absent),
            (r#"{"inputs":[{}]}"#, Absent),
            (r#"{"inputs":[{},{"shape":[3]}]}"#, Absent),
            (
                r#"{"inputs":[{"name":"a","parameters":{"shape":[3]}}]}"#,
                Absent,
            ),
            (r#"{}"#, Absent),
            (r#"{"outputs":[{"shape":[3]}]}"#, Absent),
            (r#"[{"inputs":[{"shape":[3]}]}]"#, Absent),
            (r#""inputs""#, Absent),
            (r#"{"shape":[3],"inputs":[{"shape":[4]}]}"#, Found(4)),
        ] {
            assert_eq!(complete(doc), answer, "{doc}");
            assert_prefixes_consistent(doc.as_bytes(), answer);
        }
        assert_eq!(complete(""), Absent);
        assert_eq!(partial(""), NeedMore);
        assert_eq!(complete(" \n\t "), Absent);
        assert_eq!(partial(" \n\t "), NeedMore);
    }

    #[test]
    fn first_of_duplicate_keys_wins() {
        assert_eq!(
            complete(r#"{"inputs":[{"shape":[2]}],"inputs":[{"shape":[3]}]}"#),
            Found(2)
        );
        assert_eq!(complete(r#"{"inputs":5,"inputs":[{"shape":[3]}]}"#), Absent);
        assert_eq!(
            complete(r#"{"inputs":[{"shape":[6],"shape":[7]}]}"#),
            Found(6)
        );
        assert_eq!(
            complete(r#"{"inputs":[{"shape":"x","shape":[7]}]}"#),
            Absent
        );
    }

    // ---- Strings and escapes ----------------------------------------------------------

    #[test]
    fn escapes_in_strings() {
        for doc in [
            r#"{"id":"\"inputs\":[{\"shape\":[5]}]","inputs":[{"shape":[6]}]}"#,
            r#"{"id":"\\","inputs":[{"shape":[6]}]}"#,
            r#"{"id":"\\\"","inputs":[{"shape":[6]}]}"#,
            r#"{"id":"\u00e9\u20AC\ud83d\ude00\/\b\f\n\r\t","inputs":[{"shape":[6]}]}"#,
            r#"{"id":"é€😀 raw UTF-8","inputs":[{"shape":[6]}]}"#,
            r#"{"inputs":[{"name":"\"shape\":[1]","data":["\\\"]"],"shape":[6]}]}"#,
            r#"{"in\"puts":[{"shape":[1]}],"inputs":[{"shape":[6]}]}"#,
        ] {
            assert_eq!(complete(doc), Found(6), "{doc}");
            assert_prefixes_consistent(doc.as_bytes(), Found(6));
        }
    }

    #[test]
    fn escaped_keys_match_as_triton_decodes_them() {
        assert_eq!(complete(r#"{"inp\u0075ts":[{"shape":[3]}]}"#), Found(3));
        assert_eq!(complete(r#"{"inputs":[{"sh\u0061pe":[3]}]}"#), Found(3));
        assert_eq!(
            complete(r#"{"\u0069\u006E\u0070\u0075\u0074\u0073":[{"shape":[3]}]}"#),
            Found(3)
        );
        // The first of two equal keys wins, however either is written.
        assert_eq!(
            complete(r#"{"inp\u0075ts":[{"shape":[3]}],"inputs":[{"shape":[4]}]}"#),
            Found(3)
        );
        assert_eq!(
            complete(r#"{"inputs":[{"shape\u00e9":[3],"shape":[4]}]}"#),
            Found(4)
        );
        assert_eq!(complete(r#"{"input\n":[{"shape":[3]}]}"#), Absent);
        assert_eq!(
            complete(r#"{"\/inputs":1,"inputs":[{"shape":[4]}]}"#),
            Found(4)
        );
    }

    // ---- NaN and infinity -------------------------------------------------------------

    #[test]
    fn nan_and_infinity_are_skipped_like_triton() {
        let doc = r#"{"parameters":{"a":NaN,"b":-Infinity,"c":Inf,"d":-NaN,"e":[Infinity,-Inf]},"inputs":[{"data":[NaN],"shape":[4]}]}"#;
        assert_eq!(complete(doc), Found(4));
        assert_prefixes_consistent(doc.as_bytes(), Found(4));
        for bad in [
            "Nan", "nan", "Infinit", "Infinite", "In", "-N", "--1", "+1", "inf",
        ] {
            let doc = format!(r#"{{"p":{bad},"inputs":[{{"shape":[4]}}]}}"#);
            assert_eq!(complete(&doc), Absent, "{doc}");
        }
    }

    // ---- Malformed documents ----------------------------------------------------------

    #[test]
    fn malformed_before_answer_is_absent() {
        let tail = r#""inputs":[{"shape":[4]}]}"#;
        for head in [
            r#"{"id":1,,"#,
            r#"{"id":}"#,
            r#"{"id" 1,"#,
            r#"{id:1,"#,
            r#"{'id':1,"#,
            r#"{"a":[1}],"#,
            r#"{"a":{"b"}},"#,
            r#"{"a":{"b":1,}},"#,
            r#"{"a":[1,]},"#,
            r#"{"a":[,1]},"#,
            r#"{"a":tru,"#,
            r#"{"a":True,"#,
            r#"{"a":01,"#,
            r#"{"a":1.,"#,
            r#"{"a":.5,"#,
            r#"{"a":1e,"#,
            r#"{"a":1e+,"#,
            r#"{"a":-,"#,
            r#"{"a":- 1,"#,
            r#"{"a":"\x","#,
            r#"{"a":"\u12G4","#,
            r#"{"a":"\u12","#,
            "{\"a\":\"tab\there\",",
            "{\"a\":\"nl\nhere\",",
            "{\"a\":1 // comment\n,",
            "{\"a\":1 /* comment */,",
            r#"{"a":1}{"#,
            r#"{"a":[1]]],"#,
            r#"{"a":{}},"#,
            "\u{feff}{",
            r#"{"a":1"#,
        ] {
            let doc = format!("{head}{tail}");
            assert_eq!(complete(&doc), Absent, "{doc}");
            assert_eq!(partial(&doc), Absent, "{doc}");
        }
        // Malformation after the answer is not looked at.
        assert_eq!(complete(r#"{"inputs":[{"shape":[4,}}}}"#), Found(4));
        // A trailing comma before the closing brace is not accepted by Triton either.
        assert_eq!(complete(r#"{"a":1,}"#), Absent);
    }

    #[test]
    fn truncation_waits_for_more() {
        for prefix in [
            "{",
            "{\"inpu",
            "{\"inputs\"",
            "{\"inputs\":[{\"shape\":[",
            "{\"inputs\":[{\"shape\":[12",
            "{\"inputs\":[{\"shape\":[0",
            "{\"inputs\":[{\"shape\":[1844674407370955161",
            "{\"id\":\"abc\\",
            "{\"id\":\"abc\\u00",
            "{\"id\":12",
            "{\"id\":1.",
            "{\"id\":1e-",
            "{\"id\":-",
            "{\"id\":Inf",
            "{\"id\":Infin",
            "{\"id\":tr",
            "{\"id\":[[{\"a\":",
            "{\"id\":1,",
        ] {
            assert_eq!(partial(prefix), NeedMore, "{prefix}");
            assert_eq!(complete(prefix), Absent, "{prefix}");
        }
        assert_eq!(partial("{\"inputs\":[{\"shape\":[12,"), Found(12));
        assert_eq!(complete("{\"inputs\":[{\"shape\":[12]"), Found(12));
        assert_eq!(partial("{\"inputs\":[{\"shape\":[12 "), Found(12));
        // Overflow is final even before the literal ends: more digits only make it larger.
        assert_eq!(
            partial("{\"inputs\":[{\"shape\":[18446744073709551616"),
            Absent
        );
        assert_eq!(partial("{\"inputs\":[{\"shape\":[-"), Absent);
    }

    // ---- Size and depth ---------------------------------------------------------------

    #[test]
    fn stops_before_tensor_data() {
        let head = r#"{"id":"big","inputs":[{"name":"INPUT0","datatype":"FP32","shape":[8,3,224,224],"data":["#;
        let mut doc = Vec::with_capacity(10 * 1024 * 1024 + 64);
        doc.extend_from_slice(head.as_bytes());
        while doc.len() < 10 * 1024 * 1024 {
            doc.extend_from_slice(b"0.123456,");
        }
        doc.extend_from_slice(b"1.0]}]}");

        let (answer, read) = scan(&doc, true);
        assert_eq!(answer, Found(8));
        let first_dim_end = head.find("[8,").unwrap() + "[8,".len();
        assert_eq!(read, first_dim_end, "the scan must stop right after `8,`");
        assert_eq!(batch_size(&doc[..first_dim_end], false), Found(8));
        assert_eq!(batch_size(&doc[..first_dim_end], true), Found(8));
        assert_eq!(batch_size(&doc[..first_dim_end - 1], false), NeedMore);
        assert_eq!(batch_size(&doc, false), Found(8));
    }

    #[test]
    fn skips_huge_values_before_inputs() {
        let mut doc = b"{\"id\":\"".to_vec();
        doc.resize(doc.len() + 4 * 1024 * 1024, b'x');
        doc.extend_from_slice(b"\",\"parameters\":{\"blob\":[");
        for i in 0..400_000u32 {
            doc.extend_from_slice(format!("{i},").as_bytes());
        }
        doc.extend_from_slice(b"{\"inputs\":[{\"shape\":[1]}]}]},\"inputs\":[{\"shape\":[16,3]}]}");
        assert_eq!(batch_size(&doc, true), Found(16));
        assert_eq!(batch_size(&doc[..doc.len() - 10], false), NeedMore);
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        const DEPTH: usize = 1_000_000;
        let mut doc = b"{\"parameters\":".to_vec();
        doc.resize(doc.len() + DEPTH, b'[');
        assert_eq!(batch_size(&doc, false), NeedMore);
        assert_eq!(batch_size(&doc, true), Absent);

        doc.resize(doc.len() + DEPTH, b']');
        doc.extend_from_slice(b",\"inputs\":[{\"shape\":[3]}]}");
        assert_eq!(batch_size(&doc, true), Found(3));

        let mut objects = b"{\"p\":".to_vec();
        for _ in 0..DEPTH / 10 {
            objects.extend_from_slice(b"{\"a\":[1,");
        }
        objects.push(b'2');
        for _ in 0..DEPTH / 10 {
            objects.extend_from_slice(b"]}");
        }
        objects.extend_from_slice(b",\"inputs\":[{\"shape\":[9]}]}");
        assert_eq!(batch_size(&objects, true), Found(9));
        assert_eq!(batch_size(&objects[..objects.len() / 2], false), NeedMore);
    }

    #[test]
    fn bracket_kinds_checked_within_tracked_depth() {
        let tail = ",\"inputs\":[{\"shape\":[3]}]}";
        for depth in [1, 63, 64, 65, TRACKED_DEPTH - 1, TRACKED_DEPTH] {
            let open = "[".repeat(depth - 1) + "{\"k\":";
            let good = format!("{{\"p\":{open}1}}{}{tail}", "]".repeat(depth - 1));
            assert_eq!(complete(&good), Found(3), "depth {depth}");
            let bad = format!("{{\"p\":{open}1]{}{tail}", "]".repeat(depth - 1));
            assert_eq!(complete(&bad), Absent, "depth {depth}");
            // Keys are required after a comma inside a tracked object.
            let keyless = format!("{{\"p\":{open}1,2}}{}{tail}", "]".repeat(depth - 1));
            assert_eq!(complete(&keyless), Absent, "depth {depth}");
        }
        // Beyond the tracked depth the innermost levels are only counted, but a mismatch at
        // a tracked level is still caught.
        let depth = TRACKED_DEPTH + 10;
        let deep = format!(
            "{{\"p\":{}{{\"k\":1,\"l\":[2]}}{}{tail}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(complete(&deep), Found(3));
        let outer_mismatch = format!(
            "{{\"p\":{}{}}}{tail}",
            "[".repeat(depth),
            "]".repeat(depth - 1)
        );
        assert_eq!(complete(&outer_mismatch), Absent);
    }

    // ---- Randomized -------------------------------------------------------------------

    /// An independent, recursive, allocating parser used as the oracle for valid documents.
    enum Json {
        /// Members as (raw key bytes, value).
        Object(Vec<(Vec<u8>, Json)>),
        Array(Vec<Json>),
        Number(Vec<u8>),
        Other,
    }

    struct Oracle<'a> {
        s: &'a [u8],
        i: usize,
        depth: usize,
    }

    impl Oracle<'_> {
        fn parse(s: &[u8]) -> Option<Json> {
            let mut p = Oracle { s, i: 0, depth: 0 };
            let value = p.value()?;
            p.ws();
            (p.i == s.len()).then_some(value)
        }

        fn ws(&mut self) {
            while self.i < self.s.len() && b" \t\n\r".contains(&self.s[self.i]) {
                self.i += 1;
            }
        }

        fn eat(&mut self, text: &[u8]) -> bool {
            let ok = self.s[self.i..].starts_with(text);
            if ok {
                self.i += text.len();
            }
            ok
        }

        fn value(&mut self) -> Option<Json> {
            self.ws();
            self.depth += 1;
            if self.depth > 300 {
                return None;
            }
            let result = match *self.s.get(self.i)? {
                b'{' => {
                    self.i += 1;
                    let mut members = Vec::new();
                    self.ws();
                    if !self.eat(b"}") {
                        loop {
                            self.ws();
                            let key = self.string()?;
                            self.ws();
                            if !self.eat(b":") {
                                return None;
                            }
                            members.push((key, self.value()?));
                            self.ws();
                            if self.eat(b"}") {
                                break;
                            }
                            if !self.eat(b",") {
                                return None;
                            }
                        }
                    }
                    Json::Object(members)
                }
                b'[' => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if !self.eat(b"]") {
                        loop {
                            items.push(self.value()?);
                            self.ws();
                            if self.eat(b"]") {
                                break;
                            }
                            if !self.eat(b",") {
                                return None;
                            }
                        }
                    }
                    Json::Array(items)
                }
                b'"' => {
                    self.string()?;
                    Json::Other
                }
                _ if self.eat(b"true") || self.eat(b"false") || self.eat(b"null") => Json::Other,
                _ => self.number()?,
            };
            self.depth -= 1;
            Some(result)
        }

        /// A string's raw bytes between the quotes, escapes validated but not decoded.
        fn string(&mut self) -> Option<Vec<u8>> {
            if !self.eat(b"\"") {
                return None;
            }
            let start = self.i;
            loop {
                let c = *self.s.get(self.i)?;
                self.i += 1;
                match c {
                    b'"' => return Some(self.s[start..self.i - 1].to_vec()),
                    b'\\' => {
                        let e = *self.s.get(self.i)?;
                        self.i += 1;
                        if e == b'u' {
                            let hex = self.s.get(self.i..self.i + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        } else if !b"\"\\/bfnrt".contains(&e) {
                            return None;
                        }
                    }
                    0..=0x1f => return None,
                    _ => {}
                }
            }
        }

        fn number(&mut self) -> Option<Json> {
            let start = self.i;
            self.eat(b"-");
            if self.eat(b"NaN") || self.eat(b"Infinity") || self.eat(b"Inf") {
                return Some(Json::Other);
            }
            let int_start = self.i;
            let digits = |p: &mut Self| {
                let from = p.i;
                while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                    p.i += 1;
                }
                p.i - from
            };
            let n = digits(self);
            if n == 0 || (n > 1 && self.s[int_start] == b'0') {
                return None;
            }
            if self.eat(b".") && digits(self) == 0 {
                return None;
            }
            if self.eat(b"e") || self.eat(b"E") {
                let _ = self.eat(b"+") || self.eat(b"-");
                if digits(self) == 0 {
                    return None;
                }
            }
            Some(Json::Number(self.s[start..self.i].to_vec()))
        }
    }

    fn oracle_answer(doc: &Json) -> BatchPeek {
        fn member<'a>(value: &'a Json, name: &[u8]) -> Option<&'a Json> {
            let Json::Object(members) = value else {
                return None;
            };
            // Decoded independently of the scanner, by serde_json.
            let decoded = |raw: &[u8]| {
                let quoted = [&b"\""[..], raw, &b"\""[..]].concat();
                serde_json::from_slice::<String>(&quoted).ok()
            };
            members
                .iter()
                .find(|(key, _)| decoded(key).is_some_and(|k| k.as_bytes() == name))
                .map(|(_, v)| v)
        }
        fn first(value: &Json) -> Option<&Json> {
            match value {
                Json::Array(items) => items.first(),
                _ => None,
            }
        }
        let text = member(doc, b"inputs")
            .and_then(first)
            .and_then(|input| member(input, b"shape"))
            .and_then(first);
        match text {
            Some(Json::Number(text)) if text.iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(text)
                    .unwrap()
                    .parse()
                    .map_or(Absent, Found)
            }
            _ => Absent,
        }
    }

    fn gen_ws(rng: &mut Rng, out: &mut Vec<u8>) {
        while rng.chance(15) {
            out.push(b" \t\n\r"[rng.below(4)]);
        }
    }

    fn gen_string(rng: &mut Rng, out: &mut Vec<u8>) {
        out.push(b'"');
        for _ in 0..rng.below(6) {
            let piece = rng.pick(&[
                "a",
                "inputs",
                "shape",
                "\\\"",
                "\\\\",
                "\\/",
                "\\n",
                "\\u00e9",
                "\\uD83D\\uDE00",
                "é",
                "{",
                "]",
                ":",
                ",",
                " ",
            ]);
            out.extend_from_slice(piece.as_bytes());
        }
        out.push(b'"');
    }

    fn gen_key(rng: &mut Rng, out: &mut Vec<u8>) {
        if rng.chance(30) {
            gen_string(rng, out);
        } else {
            let key = rng.pick(&[
                "inputs",
                "shape",
                "name",
                "data",
                "parameters",
                "datatype",
                "inp\\u0075ts",
                "sh\\u0061pe",
                "inputs ",
                "Shape",
                "",
                "id",
            ]);
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.push(b'"');
        }
    }

    fn gen_number(rng: &mut Rng, out: &mut Vec<u8>) {
        let text = match rng.below(20) {
            0 => "18446744073709551615".to_string(),
            1 => "18446744073709551616".to_string(),
            2 => "123456789012345678901234".to_string(),
            3 => rng
                .pick(&["-1", "-0", "0.0", "2.5", "1e3", "7E+2", "3e-1", "-0.5e-7"])
                .to_string(),
            4 => rng
                .pick(&["NaN", "-NaN", "Inf", "-Inf", "Infinity", "-Infinity"])
                .to_string(),
            5 => "0".to_string(),
            _ => rng.below(300).to_string(),
        };
        out.extend_from_slice(text.as_bytes());
    }

    /// A random valid JSON value whose containers are biased towards the interesting keys.
    fn gen_value(rng: &mut Rng, out: &mut Vec<u8>, depth: usize) {
        gen_ws(rng, out);
        let kind = if depth >= 5 {
            rng.below(5)
        } else {
            rng.below(8)
        };
        match kind {
            0 => gen_string(rng, out),
            1 | 2 => gen_number(rng, out),
            3 => out.extend_from_slice(rng.pick(&["true", "false", "null"]).as_bytes()),
            4 => out.extend_from_slice(rng.pick(&["[]", "{}", "[ ]", "{ }"]).as_bytes()),
            5 => {
                out.push(b'[');
                for i in 0..1 + rng.below(4) {
                    if i > 0 {
                        out.push(b',');
                    }
                    gen_value(rng, out, depth + 1);
                }
                gen_ws(rng, out);
                out.push(b']');
            }
            _ => gen_object(rng, out, depth, |rng, out, depth| {
                gen_value(rng, out, depth + 1)
            }),
        }
        gen_ws(rng, out);
    }

    fn gen_object(
        rng: &mut Rng,
        out: &mut Vec<u8>,
        depth: usize,
        mut member_value: impl FnMut(&mut Rng, &mut Vec<u8>, usize),
    ) {
        out.push(b'{');
        for i in 0..1 + rng.below(4) {
            if i > 0 {
                out.push(b',');
            }
            gen_ws(rng, out);
            gen_key(rng, out);
            gen_ws(rng, out);
            out.push(b':');
            member_value(rng, out, depth);
        }
        gen_ws(rng, out);
        out.push(b'}');
    }

    fn gen_shape(rng: &mut Rng, out: &mut Vec<u8>) {
        if rng.chance(5) {
            gen_value(rng, out, 3);
            return;
        }
        out.push(b'[');
        let dims = if rng.chance(10) { 0 } else { 1 + rng.below(4) };
        for i in 0..dims {
            if i > 0 {
                out.push(b',');
            }
            gen_ws(rng, out);
            if i == 0 && rng.chance(10) {
                gen_value(rng, out, 4);
            } else {
                gen_number(rng, out);
            }
            gen_ws(rng, out);
        }
        out.push(b']');
    }

    /// Writes `members` in a random order as `"key": value` pairs, the value by `value`.
    fn gen_members(
        rng: &mut Rng,
        out: &mut Vec<u8>,
        mut members: Vec<&str>,
        mut value: impl FnMut(&mut Rng, &mut Vec<u8>, &str),
    ) {
        for i in 0..members.len() {
            let j = i + rng.below(members.len() - i);
            members.swap(i, j);
        }
        for (i, key) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            gen_ws(rng, out);
            out.extend_from_slice(format!("\"{key}\"").as_bytes());
            gen_ws(rng, out);
            out.push(b':');
            gen_ws(rng, out);
            value(rng, out, key);
            gen_ws(rng, out);
        }
    }

    fn gen_input(rng: &mut Rng, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut members: Vec<&str> = vec!["name", "datatype", "shape", "data", "parameters"];
        if rng.chance(10) {
            members.retain(|m| *m != "shape");
        }
        if rng.chance(10) {
            members.push("shape");
        }
        if rng.chance(10) {
            members.push("sh\\u0061pe");
        }
        gen_members(rng, out, members, |rng, out, key| match key {
            "shape" | "sh\\u0061pe" => gen_shape(rng, out),
            "data" => {
                out.push(b'[');
                for j in 0..rng.below(6) {
                    if j > 0 {
                        out.push(b',');
                    }
                    gen_number(rng, out);
                }
                out.push(b']');
            }
            _ => gen_value(rng, out, 2),
        });
        out.push(b'}');
    }

    /// A random request in the style of tritonclient, with decoys, odd key orders and the
    /// occasional deviation from the expected shape.
    fn gen_request(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        gen_ws(rng, &mut out);
        out.push(b'{');
        let mut members: Vec<&str> = vec!["id", "parameters", "inputs", "outputs"];
        if rng.chance(10) {
            members.retain(|m| *m != "inputs");
        }
        if rng.chance(10) {
            members.push("inputs");
        }
        if rng.chance(10) {
            members.push("inp\\u0075ts");
        }
        if rng.chance(20) {
            members.push("shape");
        }
        gen_members(rng, &mut out, members, |rng, out, key| match key {
            "inputs" | "inp\\u0075ts" if rng.chance(90) => {
                out.push(b'[');
                let count = if rng.chance(10) { 0 } else { 1 + rng.below(3) };
                for j in 0..count {
                    if j > 0 {
                        out.push(b',');
                    }
                    gen_ws(rng, out);
                    if rng.chance(90) {
                        gen_input(rng, out);
                    } else {
                        gen_value(rng, out, 2);
                    }
                    gen_ws(rng, out);
                }
                out.push(b']');
            }
            "parameters" => gen_object(rng, out, 1, |rng, out, depth| {
                gen_value(rng, out, depth + 1)
            }),
            _ => gen_value(rng, out, 1),
        });
        out.push(b'}');
        gen_ws(rng, &mut out);
        out
    }

    #[test]
    fn random_requests_match_oracle() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut found = 0;
        for round in 0..3000 {
            let doc = gen_request(&mut rng);
            let parsed = Oracle::parse(&doc)
                .unwrap_or_else(|| panic!("generator made invalid JSON: {:?}", show(&doc)));
            let answer = oracle_answer(&parsed);
            found += usize::from(matches!(answer, Found(_)));
            if round < 300 {
                assert_prefixes_consistent(&doc, answer);
            } else {
                assert_eq!(batch_size(&doc, true), answer, "{:?}", show(&doc));
                assert_sound(&doc, (0..8).map(|_| rng.below(doc.len() + 1)));
            }
        }
        // The generator must exercise both outcomes substantially.
        assert!((900..2800).contains(&found), "found {found}");
    }

    #[test]
    fn random_mutations_are_sound() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut still_valid = 0;
        for _ in 0..4000 {
            let mut doc = gen_request(&mut rng);
            mutate(&mut rng, &mut doc);
            if let Some(parsed) = Oracle::parse(&doc) {
                still_valid += 1;
                assert_eq!(
                    batch_size(&doc, true),
                    oracle_answer(&parsed),
                    "{:?}",
                    show(&doc)
                );
            }
            assert_sound(&doc, (0..12).map(|_| rng.below(doc.len() + 1)));
        }
        assert!(
            still_valid > 200,
            "only {still_valid} mutations stayed valid"
        );
    }

    #[test]
    fn random_token_soup_is_sound() {
        const TOKENS: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"inputs\"",
            "\"shape\"",
            "\"x\"",
            "\"",
            "\\",
            "1",
            "0",
            "-",
            ".",
            "e",
            "8,",
            "true",
            "null",
            "NaN",
            "Inf",
            " ",
            "\n",
            "18446744073709551616",
            "{\"inputs\":[{\"shape\":[",
            "\\u00",
        ];
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let mut decided = [0usize; 3];
        for _ in 0..5000 {
            let mut doc = Vec::new();
            // Starting from part of a real request head lets the soup reach the answer.
            let head = br#"{"id":"7","inputs":[{"name":"a","shape":["#;
            match rng.below(10) {
                0..=3 => doc.extend_from_slice(head),
                4..=6 => doc.extend_from_slice(&head[..rng.below(head.len() + 1)]),
                _ => {}
            }
            for _ in 0..rng.below(40) {
                if rng.chance(5) {
                    doc.push(rng.next() as u8);
                } else {
                    doc.extend_from_slice(rng.pick(TOKENS).as_bytes());
                }
            }
            if let Some(parsed) = Oracle::parse(&doc) {
                assert_eq!(
                    batch_size(&doc, true),
                    oracle_answer(&parsed),
                    "{:?}",
                    show(&doc)
                );
            }
            assert_sound(&doc, 0..=doc.len());
            decided[match batch_size(&doc, false) {
                Found(_) => 0,
                Absent => 1,
                NeedMore => 2,
            }] += 1;
        }
        assert!(decided.iter().all(|&n| n > 100), "{decided:?}");
    }

    #[test]
    fn random_bytes_are_sound() {
        let mut rng = Rng(0x0F0F_1234_4321_F0F0);
        for _ in 0..3000 {
            let len = rng.below(200);
            let mut doc: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.chance(50) && !doc.is_empty() {
                doc[0] = b'{';
            }
            assert_sound(&doc, 0..=doc.len());
        }
    }
}
