//! Peek at the sequence-batching control of an infer request, for sequence affinity: every
//! request of a sequence must reach the Triton instance that holds the sequence's state.
//!
//! Triton reads the control from the request's own parameters (not those of its inputs or
//! outputs): `sequence_id`, the correlation id, where 0 and `""` mean "no sequence";
//! `sequence_start` and `sequence_end`, booleans that default to false. Like the batch-size
//! peeks, these work on whatever prefix of the body has arrived and keep no state between
//! calls, but how much must arrive differs by protocol:
//!
//! * JSON: the first top-level `"parameters"` object settles the answer (rapidjson's lookup
//!   finds the first of duplicate keys), so the scan stops right after it; tritonclient's
//!   bodies usually carry it before the tensors. A body without one is read to its end, or
//!   for binary-tensor requests to the end of the JSON part.
//! * gRPC: a later map entry replaces an earlier one with the same key, but every encoder
//!   writes fields in number order, so `parameters` (field 4) comes before the tensors
//!   (fields 5–7). The answer is settled at the first field numbered above 4, so a message
//!   larger than Trident may buffer keeps its affinity. The deliberate difference: in a
//!   non-canonical message whose parameters follow its tensors, those later entries are
//!   not seen.
//!
//! A request Triton would reject for its sequence control (a negative or fractional JSON id,
//! a flag that is not a boolean, an id of the wrong parameter type) is
//! [`SequencePeek::Absent`]: it is forwarded untouched and Triton answers it.

use super::grpc::{first_message, next_field, Encoding, Peek, Step, Value};
use super::http_body::peek_json;
use super::json_scan::{self, key_is, run, unescaped, Halt, Scanner};

pub use filters::affinity::SequenceId;

/// The sequence-batching control of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceControl {
    /// The sequence the request belongs to.
    pub id: SequenceId,
    /// The request starts the sequence (`sequence_start`).
    pub start: bool,
    /// The request ends the sequence (`sequence_end`).
    pub end: bool,
}

/// The outcome of peeking at a request's sequence control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequencePeek {
    /// More bytes may settle the answer.
    NeedMore,
    /// The request belongs to a sequence. Final.
    Found(SequenceControl),
    /// Not a sequence request, or one that cannot be read (Triton will reject it): forward
    /// it untouched. Final.
    Absent,
}

/// The sequence control of a KServe v2 HTTP infer request, from the start of its body.
///
/// Takes the arguments of [`peek_batch_size`](super::http_body::peek_batch_size): `json_len`
/// is the `Inference-Header-Content-Length` of binary-tensor requests, `encoding` the body's
/// `Content-Encoding`, and `body_complete` says no more bytes follow, after which
/// [`SequencePeek::NeedMore`] is never returned.
///
/// Keys match after their escapes are decoded, the first of duplicate keys wins, and a
/// string id is decoded. An integer id must be a literal that fits in a `u64`.
pub fn peek_http(
    body: &[u8],
    json_len: Option<usize>,
    encoding: Encoding,
    body_complete: bool,
) -> SequencePeek {
    peek_json(
        body,
        json_len,
        encoding,
        body_complete,
        SequencePeek::Absent,
        |prefix, complete| scan_json(prefix, complete).0,
    )
}

/// Reads a JSON document prefix like [`peek_http`], and reports how many bytes it read.
fn scan_json(prefix: &[u8], complete: bool) -> (SequencePeek, usize) {
    let (verdict, read) = run(prefix, complete, json_control);
    let peek = match verdict {
        Ok(control) => SequencePeek::Found(control),
        Err(Halt::Absent) => SequencePeek::Absent,
        Err(Halt::NeedMore) => SequencePeek::NeedMore,
    };
    (peek, read)
}

/// Reads the first top-level `parameters` object through its `}`; every other value is
/// skipped, including later duplicates of the members it reads.
fn json_control(scanner: &mut Scanner<'_>) -> json_scan::Step<SequenceControl> {
    scanner.find_member(b"parameters")?;
    let (mut id, mut start, mut end) = (None, None, None);
    let mut key = scanner.open_object()?;
    while let Some(raw) = key {
        if id.is_none() && key_is(raw, b"sequence_id") {
            // No later byte can turn a missing id into one, so 0 and "" end the scan.
            id = Some(json_id(scanner)?.ok_or(Halt::Absent)?);
        } else if start.is_none() && key_is(raw, b"sequence_start") {
            start = Some(scanner.boolean()?);
        } else if end.is_none() && key_is(raw, b"sequence_end") {
            end = Some(scanner.boolean()?);
        } else {
            scanner.skip_value()?;
        }
        key = scanner.next_key()?;
    }
    Ok(SequenceControl {
        id: id.ok_or(Halt::Absent)?,
        start: start.unwrap_or(false),
        end: end.unwrap_or(false),
    })
}

/// Reads a `sequence_id` value: a string, or a number rapidjson calls `Uint64`, the two
/// forms Triton accepts.
fn json_id(scanner: &mut Scanner<'_>) -> json_scan::Step<Option<SequenceId>> {
    match scanner.peek_token()? {
        b'"' => {
            let raw = scanner.string()?;
            Ok(unescaped(raw).and_then(|text| string_id(&text)))
        }
        // Whatever follows, a leading `0` is the id 0 or not an integer Triton accepts;
        // deciding here keeps the verdict from depending on a byte the scan did not consume.
        b'0' => {
            scanner.bump()?;
            Ok(None)
        }
        _ => scanner.unsigned_integer().map(int_id),
    }
}

fn int_id(value: u64) -> Option<SequenceId> {
    (value != 0).then_some(SequenceId::Int(value))
}

/// A string id as Triton keeps it: it hands the id on as a C string, so a NUL ends it.
/// `None` when that leaves it empty (no sequence) or not UTF-8 (not a valid request).
fn string_id(text: &[u8]) -> Option<SequenceId> {
    let text = text.split(|&byte| byte == 0).next().unwrap_or_default();
    let text = std::str::from_utf8(text).ok().filter(|t| !t.is_empty())?;
    Some(SequenceId::Str(text.into()))
}

/// `ModelInferRequest.parameters`, a `map<string, InferParameter>`, whose entries are
/// messages with the key in field 1 and the value in field 2.
const INFER_PARAMETERS: u64 = 4;
const ENTRY_KEY: u64 = 1;
const ENTRY_VALUE: u64 = 2;
/// The members of `InferParameter`'s `parameter_choice` oneof.
const BOOL_PARAM: u64 = 1;
const INT64_PARAM: u64 = 2;
const STRING_PARAM: u64 = 3;
const DOUBLE_PARAM: u64 = 4;
const UINT64_PARAM: u64 = 5;

/// The sequence control of a `ModelInfer` or `ModelStreamInfer` call, from the start of its
/// body: of its first `ModelInferRequest`, which must be whole to settle the answer.
///
/// `encoding` is the `grpc-encoding` of compressed messages, and `body_complete` says no
/// more bytes follow, after which [`SequencePeek::NeedMore`] is never returned.
///
/// Follows Triton: `sequence_id` must be an `int64_param` (a negative one becomes the
/// unsigned id with the same bits, as Triton converts it) or a `string_param`, and the
/// flags `bool_param`s; the last map entry for a key wins.
pub fn peek_grpc(body: &[u8], encoding: Encoding, body_complete: bool) -> SequencePeek {
    let (message, whole) = match first_message(body, encoding, body_complete) {
        Ok(found) => found,
        Err(Peek::NeedMore) => return SequencePeek::NeedMore,
        Err(_) => return SequencePeek::Absent,
    };
    let (mut id, mut start, mut end) = (None, None, None);
    let mut rest: &[u8] = &message;
    loop {
        match next_field(rest) {
            Step::Field {
                number: INFER_PARAMETERS,
                value: Value::Bytes(entry),
                rest: next,
            } => {
                let Some((key, param)) = map_entry(entry) else {
                    return SequencePeek::Absent;
                };
                match key {
                    b"sequence_id" => id = Some(param),
                    b"sequence_start" => start = Some(param),
                    b"sequence_end" => end = Some(param),
                    _ => {}
                }
                rest = next;
            }
            // Encoders write fields in number order, so parameters (4) precede the
            // tensors (5–7): deciding there keeps affinity for calls whose first message
            // is larger than what Trident may buffer, and gives the same answer whether
            // or not the rest has arrived.
            Step::Field { number, .. } if number > INFER_PARAMETERS => break,
            Step::Field { rest: next, .. } => rest = next,
            Step::End if whole => break,
            Step::End | Step::Truncated { .. } if !whole && !body_complete => {
                return SequencePeek::NeedMore
            }
            Step::End | Step::Truncated { .. } | Step::Malformed(_) => return SequencePeek::Absent,
        }
    }
    grpc_control(id, start, end).map_or(SequencePeek::Absent, SequencePeek::Found)
}

/// Applies Triton's checks to the parameters read; `None` for a missing key.
fn grpc_control(
    id: Option<Param<'_>>,
    start: Option<Param<'_>>,
    end: Option<Param<'_>>,
) -> Option<SequenceControl> {
    let id = match id? {
        Param::Int(value) => int_id(value),
        Param::Str(text) => string_id(text),
        Param::Unset | Param::Bool(_) | Param::Other => None,
    }?;
    let flag = |param| match param {
        None => Some(false),
        Some(Param::Bool(value)) => Some(value),
        Some(_) => None,
    };
    Some(SequenceControl {
        id,
        start: flag(start)?,
        end: flag(end)?,
    })
}

/// An `InferParameter`'s value, as far as sequence control needs it.
#[derive(Clone, Copy)]
enum Param<'a> {
    /// No member of the oneof is set.
    Unset,
    Bool(bool),
    /// `int64_param`'s bits, which are the id Triton makes of it.
    Int(u64),
    Str(&'a [u8]),
    /// A member sequence control does not accept.
    Other,
}

/// The key and value of a whole map entry; `None` when it is malformed. A missing key is
/// `""` and a missing value [`Param::Unset`], as protobuf defaults them.
fn map_entry(entry: &[u8]) -> Option<(&[u8], Param<'_>)> {
    let mut key: &[u8] = &[];
    let mut param = Param::Unset;
    let mut rest = entry;
    loop {
        match next_field(rest) {
            Step::Field {
                number: ENTRY_KEY,
                value: Value::Bytes(text),
                rest: next,
            } => {
                key = text;
                rest = next;
            }
            Step::Field {
                number: ENTRY_VALUE,
                value: Value::Bytes(value),
                rest: next,
            } => {
                // A repeated message field merges into the one before it, so the oneof
                // member set last across all of them wins.
                param = infer_parameter(value, param)?;
                rest = next;
            }
            Step::Field { rest: next, .. } => rest = next,
            Step::End => return Some((key, param)),
            Step::Truncated { .. } | Step::Malformed(_) => return None,
        }
    }
}

/// Merges the whole `InferParameter` message `message` into `param`. A field whose wire
/// type does not match its declaration is an unknown field to protobuf, and ignored.
fn infer_parameter<'a>(message: &'a [u8], mut param: Param<'a>) -> Option<Param<'a>> {
    let mut rest = message;
    loop {
        let (number, value, next) = match next_field(rest) {
            Step::Field {
                number,
                value,
                rest,
            } => (number, value, rest),
            Step::End => return Some(param),
            Step::Truncated { .. } | Step::Malformed(_) => return None,
        };
        param = match (number, value) {
            (BOOL_PARAM, Value::Varint(value)) => Param::Bool(value != 0),
            (INT64_PARAM, Value::Varint(value)) => Param::Int(value),
            (STRING_PARAM, Value::Bytes(text)) => Param::Str(text),
            (DOUBLE_PARAM, Value::Fixed64) | (UINT64_PARAM, Value::Varint(_)) => Param::Other,
            _ => param,
        };
        rest = next;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use prost::Message;

    use super::*;
    use crate::protocol::kserve::model_infer_request::InferInputTensor;
    use crate::protocol::kserve::{InferParameter, ModelInferRequest};
    use crate::protocol::testing::{self, frame, mutate, string_field, varint, Rng, Verdict};
    use SequencePeek::{Absent, Found, NeedMore};

    impl Verdict for SequencePeek {
        const NEED_MORE: Self = NeedMore;
        const ABSENT: Self = Absent;
    }

    fn found(id: SequenceId, start: bool, end: bool) -> SequencePeek {
        Found(SequenceControl { id, start, end })
    }

    fn int(id: u64, start: bool, end: bool) -> SequencePeek {
        found(SequenceId::Int(id), start, end)
    }

    fn text(id: &str, start: bool, end: bool) -> SequencePeek {
        found(SequenceId::Str(id.into()), start, end)
    }

    fn json(doc: &str) -> SequencePeek {
        peek_http(doc.as_bytes(), None, Encoding::Identity, true)
    }

    /// Checks every prefix of a JSON document, as plain JSON, against its answer.
    fn assert_json_prefixes(doc: &str, answer: &SequencePeek) {
        let peek = |prefix: &[u8], complete| peek_http(prefix, None, Encoding::Identity, complete);
        testing::assert_prefixes_consistent(peek, doc.as_bytes(), answer);
        testing::assert_sound(scan_json, doc.as_bytes(), 0..=doc.len());
    }

    // ---- HTTP/JSON ----------------------------------------------------------------------

    /// As tritonclient's `json.dumps` writes a sequence request, parameters first.
    const TRITONCLIENT_JSON: &str = r#"{"id": "7", "parameters": {"sequence_id": 42, "sequence_start": true, "sequence_end": false}, "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [5]}], "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": false}}]}"#;

    /// A binary-tensor request whose parameters follow the inputs.
    const TRITONCLIENT_BINARY: &str = r#"{"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "parameters": {"binary_data_size": 4}}], "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": true}}], "parameters": {"sequence_id": "session-\u00e9\/1", "sequence_start": false, "sequence_end": true, "binary_data_output": true}}"#;

    #[test]
    fn tritonclient_bodies() {
        assert_eq!(json(TRITONCLIENT_JSON), int(42, true, false));
        assert_json_prefixes(TRITONCLIENT_JSON, &int(42, true, false));
        let answer = text("session-é/1", false, true);
        assert_eq!(json(TRITONCLIENT_BINARY), answer);
        assert_json_prefixes(TRITONCLIENT_BINARY, &answer);

        let mut body = TRITONCLIENT_BINARY.as_bytes().to_vec();
        let json_len = body.len();
        body.extend_from_slice(&[0xff, b'}', 0, b'"']);
        assert_eq!(
            peek_http(&body, Some(json_len), Encoding::Identity, true),
            answer
        );
        assert_eq!(
            peek_http(&body, Some(json_len), Encoding::Identity, false),
            answer
        );
        for cut in 0..json_len {
            let peek = peek_http(&body[..cut], Some(json_len), Encoding::Identity, false);
            assert!(peek == NeedMore || peek == answer, "cut {cut}: {peek:?}");
        }
        // A header length that cuts the JSON short is not a readable request.
        assert_eq!(
            peek_http(&body, Some(json_len - 3), Encoding::Identity, false),
            Absent
        );
    }

    #[test]
    fn stops_right_after_parameters() {
        let head = r#"{"parameters":{"sequence_id":9,"sequence_end":true},"inputs":[{"name":"I","shape":[1,4096],"datatype":"FP32","data":["#;
        let mut doc = head.as_bytes().to_vec();
        while doc.len() < 1 << 20 {
            doc.extend_from_slice(b"0.5,");
        }
        doc.extend_from_slice(b"1]}]}");
        let parameters_end = head.find("},").unwrap() + 1;
        assert_eq!(
            scan_json(&doc, false),
            (int(9, false, true), parameters_end)
        );
        assert_eq!(
            peek_http(&doc[..parameters_end], None, Encoding::Identity, false),
            int(9, false, true)
        );
        assert_eq!(
            peek_http(&doc[..parameters_end - 1], None, Encoding::Identity, false),
            NeedMore
        );
    }

    #[test]
    fn ids_and_flags() {
        for (parameters, answer) in [
            (r#""sequence_id":1"#, int(1, false, false)),
            (
                r#""sequence_id":18446744073709551615,"sequence_start":true,"sequence_end":true"#,
                int(u64::MAX, true, true),
            ),
            (
                r#""sequence_end":true,"sequence_id":5"#,
                int(5, false, true),
            ),
            (
                r#""sequence_start":false,"sequence_id":"s""#,
                text("s", false, false),
            ),
            (
                r#""priority":1,"sequence_id" : 7 ,"timeout":1e3"#,
                int(7, false, false),
            ),
            (r#""sequence_id":0,"sequence_start":true"#, Absent),
            (r#""sequence_id":"""#, Absent),
            (r#""sequence_start":true,"sequence_end":true"#, Absent),
            (r#""sequence_id":-1"#, Absent),
            (r#""sequence_id":-0"#, Absent),
            (r#""sequence_id":1.5"#, Absent),
            (r#""sequence_id":1.0"#, Absent),
            (r#""sequence_id":1e2"#, Absent),
            (r#""sequence_id":1E2"#, Absent),
            (r#""sequence_id":18446744073709551616"#, Absent),
            (r#""sequence_id":01"#, Absent),
            (r#""sequence_id":null"#, Absent),
            (r#""sequence_id":true"#, Absent),
            (r#""sequence_id":[1]"#, Absent),
            (r#""sequence_id":{"a":1}"#, Absent),
            (r#""sequence_id":NaN"#, Absent),
            (r#""sequence_id":3,"sequence_start":1"#, Absent),
            (r#""sequence_id":3,"sequence_end":"true""#, Absent),
            (r#""sequence_id":3,"sequence_end":null"#, Absent),
            (r#""sequence_id":3,"sequence_start":tru"#, Absent),
            (r#""sequence_id":3,"sequence_start":truex"#, Absent),
            (r#""sequence_id":3,"#, Absent),
            ("", Absent),
        ] {
            let doc = format!(r#"{{"parameters":{{{parameters}}},"inputs":[]}}"#);
            assert_eq!(json(&doc), answer, "{doc}");
            assert_json_prefixes(&doc, &answer);
        }
    }

    #[test]
    fn string_ids_are_decoded() {
        for (raw, decoded) in [
            (r#"plain"#, "plain"),
            (r#"a\"b\\c\/d"#, "a\"b\\c/d"),
            (r#"\b\f\n\r\t"#, "\u{8}\u{c}\n\r\t"),
            (r#"caf\u00e9 \u20AC"#, "café €"),
            (r#"\ud83d\ude00!"#, "😀!"),
            ("raw é€😀", "raw é€😀"),
            // Triton hands the id on as a C string.
            (r#"ab\u0000cd"#, "ab"),
        ] {
            let doc = format!(r#"{{"parameters":{{"sequence_id":"{raw}"}}}}"#);
            let answer = text(decoded, false, false);
            assert_eq!(json(&doc), answer, "{doc}");
            assert_json_prefixes(&doc, &answer);
        }
        for raw in [
            r#"\u0000ab"#,
            r#"\ud83d"#,
            r#"\ud83dx"#,
            r#"\ude00"#,
            r#"\ud83d\u0041"#,
            r#"\x"#,
            "tab\there",
        ] {
            let doc = format!(r#"{{"parameters":{{"sequence_id":"{raw}"}}}}"#);
            assert_eq!(json(&doc), Absent, "{doc}");
        }
        let mut invalid_utf8 = br#"{"parameters":{"sequence_id":"a"#.to_vec();
        invalid_utf8.extend_from_slice(b"\xff\"}}");
        assert_eq!(
            peek_http(&invalid_utf8, None, Encoding::Identity, true),
            Absent
        );
    }

    #[test]
    fn only_the_first_top_level_parameters_count() {
        for (doc, answer) in [
            (
                r#"{"inputs":[{"name":"I","parameters":{"sequence_id":5}}],"outputs":[{"parameters":{"sequence_id":6}}]}"#,
                Absent,
            ),
            (
                r#"{"inputs":[{"parameters":{"sequence_id":5}}],"parameters":{"sequence_id":9}}"#,
                int(9, false, false),
            ),
            (
                r#"{"parameters":{"x":{"sequence_id":4},"y":[{"sequence_id":5}],"sequence_id":3}}"#,
                int(3, false, false),
            ),
            (
                r#"{"parameters":{"sequence_id":7},"parameters":{"sequence_id":8}}"#,
                int(7, false, false),
            ),
            (
                r#"{"parameters":{"priority":1},"parameters":{"sequence_id":8}}"#,
                Absent,
            ),
            (r#"{"parameters":5,"parameters":{"sequence_id":8}}"#, Absent),
            (
                r#"{"parameters":{"sequence_id":5,"sequence_id":6,"sequence_start":true,"sequence_start":false}}"#,
                int(5, true, false),
            ),
            (
                r#"{"parameters":{"sequence_id":0,"sequence_id":6}}"#,
                Absent,
            ),
            (
                r#"{"param\u0065ters":{"sequence_\u0069d":"\u0041","sequence_st\u0061rt":true}}"#,
                text("A", true, false),
            ),
            (
                r#"{"parameters":{"sequence_id ":5,"Sequence_id":6,"sequence_id":7}}"#,
                int(7, false, false),
            ),
            (r#"{"id":"{\"parameters\":{\"sequence_id\":1}}"}"#, Absent),
            (r#"[{"parameters":{"sequence_id":1}}]"#, Absent),
            (r#"{}"#, Absent),
        ] {
            assert_eq!(json(doc), answer, "{doc}");
            assert_json_prefixes(doc, &answer);
        }
    }

    #[test]
    fn malformed_json_before_the_answer_is_absent() {
        for doc in [
            r#"{"id":1,,"parameters":{"sequence_id":1}}"#,
            r#"{"parameters":{"sequence_id":1,}}"#,
            r#"{"parameters":{"sequence_id":1 "sequence_end":true}}"#,
            r#"{"parameters":{"sequence_id" 1}}"#,
            r#"{"parameters":{"sequence_id":1]}"#,
            r#"{"parameters":{"a":[1}],"sequence_id":1}}"#,
        ] {
            assert_eq!(json(doc), Absent, "{doc}");
            assert_json_prefixes(doc, &Absent);
        }
        // What follows a settled answer is not read.
        assert_eq!(
            json(r#"{"parameters":{"sequence_id":1}}}}]"#),
            int(1, false, false)
        );
    }

    #[test]
    fn compressed_json_bodies() {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(TRITONCLIENT_JSON.as_bytes()).unwrap();
        let gzip = gz.finish().unwrap();
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(TRITONCLIENT_BINARY.as_bytes()).unwrap();
        let deflate = zlib.finish().unwrap();
        for (body, encoding, answer) in [
            (gzip, Encoding::Gzip, int(42, true, false)),
            (deflate, Encoding::Deflate, text("session-é/1", false, true)),
        ] {
            assert_eq!(peek_http(&body, None, encoding, true), answer);
            for cut in 0..body.len() {
                let peek = peek_http(&body[..cut], None, encoding, false);
                assert!(peek == NeedMore || peek == answer, "cut {cut}: {peek:?}");
                assert_eq!(peek_http(&body[..cut], None, encoding, true), Absent);
            }
        }
        assert_eq!(peek_http(b"not gzip", None, Encoding::Gzip, true), Absent);
        assert_eq!(
            peek_http(
                TRITONCLIENT_JSON.as_bytes(),
                None,
                Encoding::Unsupported,
                false
            ),
            Absent
        );
    }

    #[test]
    fn random_json_damage_is_sound() {
        let mut rng = Rng(0x5EED_0F5E_0000_0001);
        let corpus = [
            TRITONCLIENT_JSON,
            TRITONCLIENT_BINARY,
            r#"{"parameters":{"sequence_id":"a\"\u00e9","sequence_start":true},"inputs":[]}"#,
            r#"{"inputs":[{"parameters":{"sequence_id":1}}],"parameters":{"sequence_end":false,"sequence_id":12}}"#,
        ];
        let mut outcomes = [0usize; 3];
        for _ in 0..4000 {
            let mut doc = rng.pick(&corpus).as_bytes().to_vec();
            mutate(&mut rng, &mut doc);
            testing::assert_sound(scan_json, &doc, (0..12).map(|_| rng.below(doc.len() + 1)));
            outcomes[match scan_json(&doc, true).0 {
                Found(_) => 0,
                Absent => 1,
                NeedMore => 2,
            }] += 1;
        }
        assert!(outcomes[0] > 500 && outcomes[1] > 500, "{outcomes:?}");
        for _ in 0..2000 {
            let doc: Vec<u8> = (0..rng.below(120)).map(|_| rng.next() as u8).collect();
            testing::assert_sound(scan_json, &doc, 0..=doc.len());
        }
    }

    // ---- gRPC ---------------------------------------------------------------------------

    fn request(parameters: &[(&str, InferParameter)]) -> ModelInferRequest {
        let mut input_parameters = HashMap::new();
        // Decoys: tensors have parameters of their own.
        input_parameters.insert("sequence_id".to_string(), InferParameter::int64(99));
        ModelInferRequest {
            model_name: "stateful".into(),
            id: "req-1".into(),
            parameters: parameters
                .iter()
                .map(|(key, value)| (key.to_string(), value.clone()))
                .collect(),
            inputs: vec![InferInputTensor {
                name: "INPUT".into(),
                datatype: "INT32".into(),
                shape: vec![1, 1],
                parameters: input_parameters,
                contents: None,
            }],
            raw_input_contents: vec![vec![7u8; 64].into()],
            ..Default::default()
        }
    }

    fn grpc(message: &[u8]) -> SequencePeek {
        peek_grpc(&frame(0, message), Encoding::Identity, true)
    }

    fn assert_grpc_prefixes(body: &[u8], encoding: Encoding, answer: &SequencePeek) {
        let peek = |prefix: &[u8], complete| peek_grpc(prefix, encoding, complete);
        testing::assert_prefixes_consistent(peek, body, answer);
    }

    #[test]
    fn grpc_sequence_requests() {
        for (parameters, answer) in [
            (
                vec![
                    ("sequence_id", InferParameter::int64(42)),
                    ("sequence_start", InferParameter::bool(true)),
                    ("sequence_end", InferParameter::bool(false)),
                ],
                int(42, true, false),
            ),
            (
                vec![
                    ("sequence_id", InferParameter::string("sess-é")),
                    ("sequence_end", InferParameter::bool(true)),
                    ("priority", InferParameter::int64(3)),
                ],
                text("sess-é", false, true),
            ),
            (
                vec![("sequence_id", InferParameter::int64(-1))],
                int(u64::MAX, false, false),
            ),
            (
                vec![("sequence_id", InferParameter::string("ab\0cd"))],
                text("ab", false, false),
            ),
            (vec![("sequence_id", InferParameter::int64(0))], Absent),
            (vec![("sequence_id", InferParameter::string(""))], Absent),
            (vec![("sequence_start", InferParameter::bool(true))], Absent),
            (vec![], Absent),
            (vec![("sequence_id", InferParameter::bool(true))], Absent),
            (
                vec![(
                    "sequence_id",
                    InferParameter {
                        parameter_choice: None,
                    },
                )],
                Absent,
            ),
            (
                vec![
                    ("sequence_id", InferParameter::int64(4)),
                    ("sequence_start", InferParameter::int64(1)),
                ],
                Absent,
            ),
            (
                vec![
                    ("sequence_id", InferParameter::int64(4)),
                    ("sequence_end", InferParameter::string("true")),
                ],
                Absent,
            ),
        ] {
            let message = request(&parameters).encode_to_vec();
            assert_eq!(grpc(&message), answer, "{parameters:?}");
            assert_grpc_prefixes(&frame(0, &message), Encoding::Identity, &answer);
        }
    }

    #[test]
    fn grpc_ids_of_other_parameter_types_are_rejected() {
        use crate::protocol::kserve::infer_parameter::ParameterChoice;
        for choice in [
            ParameterChoice::Uint64Param(5),
            ParameterChoice::DoubleParam(5.0),
        ] {
            let parameter = InferParameter {
                parameter_choice: Some(choice),
            };
            let message = request(&[("sequence_id", parameter)]).encode_to_vec();
            assert_eq!(grpc(&message), Absent);
        }
    }

    #[test]
    fn grpc_last_map_entry_and_oneof_member_win() {
        let first = request(&[
            ("sequence_id", InferParameter::int64(1)),
            ("sequence_start", InferParameter::bool(true)),
        ])
        .encode_to_vec();
        let second = ModelInferRequest {
            parameters: [("sequence_id".to_string(), InferParameter::string("later"))].into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Concatenated messages merge: the later entry for a key replaces the earlier, while
        // no tensor field has come between them.
        let merged = [second.clone(), first.clone()].concat();
        assert_eq!(grpc(&merged), int(1, true, false));
        // After a tensor field, the answer is settled (encoders write parameters first).
        let with_tensor = request(&[
            ("sequence_id", InferParameter::int64(1)),
            ("sequence_start", InferParameter::bool(true)),
        ]);
        let mut with_tensor = with_tensor.encode_to_vec();
        string_field(5, b"", &mut with_tensor);
        let merged = [with_tensor, second].concat();
        assert_eq!(grpc(&merged), int(1, true, false));

        // An entry with its value before its key, and two values that merge.
        let mut entry = Vec::new();
        string_field(2, &InferParameter::string("x").encode_to_vec(), &mut entry);
        string_field(2, &InferParameter::int64(8).encode_to_vec(), &mut entry);
        string_field(1, b"sequence_id", &mut entry);
        let mut message = Vec::new();
        string_field(4, &entry, &mut message);
        assert_eq!(grpc(&message), int(8, false, false));
        // Within one value, the oneof member set last wins too.
        let mut value = InferParameter::int64(8).encode_to_vec();
        value.extend(InferParameter::string("y").encode_to_vec());
        let mut entry = Vec::new();
        string_field(1, b"sequence_id", &mut entry);
        string_field(2, &value, &mut entry);
        let mut message = Vec::new();
        string_field(4, &entry, &mut message);
        assert_eq!(grpc(&message), text("y", false, false));
        // A later entry without a value resets the parameter, which Triton rejects.
        let mut unset = Vec::new();
        string_field(1, b"sequence_id", &mut unset);
        string_field(4, &unset, &mut message);
        assert_eq!(grpc(&message), Absent);
    }

    #[test]
    fn grpc_fields_with_unexpected_wire_types_are_ignored() {
        let mut value = InferParameter::int64(6).encode_to_vec();
        value.push(3 << 3); // string_param as a varint: an unknown field
        varint(1, &mut value);
        value.push(4 << 3 | 5); // double_param as a fixed32: an unknown field
        value.extend_from_slice(&[0; 4]);
        let mut entry = Vec::new();
        string_field(1, b"sequence_id", &mut entry);
        string_field(2, &value, &mut entry);
        let mut message = Vec::new();
        varint(4 << 3, &mut message); // parameters as a varint: an unknown field
        varint(1, &mut message);
        string_field(4, &entry, &mut message);
        assert_eq!(grpc(&message), int(6, false, false));
        // A malformed entry makes the message unreadable.
        let mut broken = Vec::new();
        string_field(4, &[0x0a, 5, b'a'], &mut broken);
        assert_eq!(grpc(&broken), Absent);
    }

    #[test]
    fn grpc_stream_and_compressed_messages() {
        let message = request(&[
            ("sequence_id", InferParameter::string("s1")),
            ("sequence_start", InferParameter::bool(true)),
        ])
        .encode_to_vec();
        let answer = text("s1", true, false);
        // A stream body: only the first message counts.
        let mut stream = frame(0, &message);
        stream.extend(frame(0, &request(&[]).encode_to_vec()));
        assert_eq!(peek_grpc(&stream, Encoding::Identity, false), answer);

        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&message).unwrap();
        let gzip = frame(1, &gz.finish().unwrap());
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(&message).unwrap();
        let deflate = frame(1, &zlib.finish().unwrap());
        for (body, encoding) in [(gzip, Encoding::Gzip), (deflate, Encoding::Deflate)] {
            assert_eq!(peek_grpc(&body, encoding, true), answer);
            assert_grpc_prefixes(&body, encoding, &answer);
            assert_eq!(peek_grpc(&body, Encoding::Identity, true), Absent);
            assert_eq!(peek_grpc(&body, Encoding::Unsupported, true), Absent);
        }
        assert_eq!(peek_grpc(&frame(1, b"junk"), Encoding::Gzip, true), Absent);
    }

    #[test]
    fn grpc_random_bytes_are_sound() {
        let mut rng = Rng(0x000D_DBA1_15EC_0001);
        let message = request(&[("sequence_id", InferParameter::int64(3))]).encode_to_vec();
        for round in 0..3000 {
            let mut body = if round % 2 == 0 {
                frame(0, &message)
            } else {
                let len = rng.below(80);
                let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                frame(0, &noise)
            };
            mutate(&mut rng, &mut body);
            for encoding in [Encoding::Identity, Encoding::Gzip] {
                let answer = peek_grpc(&body, encoding, true);
                assert_ne!(answer, NeedMore);
                assert_grpc_prefixes(&body, encoding, &answer);
            }
        }
    }
}
