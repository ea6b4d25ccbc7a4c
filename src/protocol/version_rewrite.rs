//! Rewrites the model version a request asks for, so a canary split can send
//! part of a model's traffic to another version without the client knowing.
//!
//! HTTP carries the version in the path; gRPC carries it in field 2 of each
//! `ModelInferRequest`, which sits before the tensors, so only the first bytes
//! of each message are rebuilt and the tensors stream through untouched.

use bytes::{Bytes, BytesMut};

use super::grpc::{next_field, Step, Value};

const MODELS_PREFIX: &str = "/v2/models/";

/// The path (with its query, if any) of an HTTP model call with the model version set to `version`:
/// `/v2/models/{m}/{rest}` → `/v2/models/{m}/versions/{version}/{rest}`, and an existing
/// `/versions/{v}/` segment is replaced. `/v2/models/{m}` (metadata, no rest) → `/v2/models/{m}/versions/{version}`.
/// The model name segment is kept byte-for-byte (it may be percent-encoded). `None` for paths that name no model.
///
/// An empty `version` removes the version segment, which asks Triton for its
/// default version, as an empty `model_version` does over gRPC. `version` is
/// inserted as given, so it must be a plain path segment (Triton versions are
/// integers). Repository calls (`/v2/repository/models/{m}/load`) address no
/// version and `/v2/models/stats` addresses no single model: both give `None`.
pub fn http_path_with_version(path_and_query: &str, version: &str) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let after = path.strip_prefix(MODELS_PREFIX)?;
    let (model, tail) = match after.split_once('/') {
        Some((model, tail)) => (model, Some(tail)),
        None => (after, None),
    };
    // Same rule as `model_from_path`: `/v2/models/stats` is the all-models statistics call.
    if model.is_empty() || (model == "stats" && tail.is_none()) {
        return None;
    }
    let call = tail.and_then(|tail| match tail.strip_prefix("versions/") {
        Some(versioned) => versioned.split_once('/').map(|(_, call)| call),
        None => Some(tail),
    });
    let mut out = String::with_capacity(path_and_query.len() + version.len() + 10);
    out.push_str(MODELS_PREFIX);
    out.push_str(model);
    if !version.is_empty() {
        out.push_str("/versions/");
        out.push_str(version);
    }
    if let Some(call) = call {
        out.push('/');
        out.push_str(call);
    }
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

/// Why a gRPC body could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    /// A compressed message (flag 1): rewriting it would mean inflating and deflating the tensors.
    Compressed,
    /// Broken framing or protobuf.
    Malformed(&'static str),
}

/// The gRPC length prefix: a compressed-flag byte and a big-endian `u32` length.
const FRAME_HEADER: usize = 5;
/// The most bytes of leading fields (model name and version) held back per message.
const MAX_LEADING_FIELDS: usize = 64 * 1024;
/// A protobuf key is a varint of at most this many bytes.
const MAX_KEY: usize = 10;
/// The most bytes held back: a full leading region plus the key that ends it,
/// since a key's field number is what tells the region is over.
const MAX_HELD: usize = FRAME_HEADER + MAX_LEADING_FIELDS + MAX_KEY;

/// Sets field 2 (`model_version`, a string) of every `ModelInferRequest` in a gRPC request body
/// stream (ModelInfer: one message; ModelStreamInfer: many), fed chunk by chunk as the body arrives.
///
/// Encoders write fields in number order, so the rewriter only looks at the
/// leading run of fields 1 and 2 of each message: every field 2 in that run is
/// replaced by one carrying the new version, and fields 1 are kept as they
/// are. A field 2 placed after a higher-numbered field is not looked for (that
/// would mean scanning the tensors) and stays; no known encoder writes one.
///
/// An error is final: the stream cannot be resynchronised after it, so every
/// later call returns it again until [`reset`](Self::reset).
pub struct GrpcVersionRewriter {
    /// Field 2 as it will be written (key, length, version), or empty to omit it.
    field: Vec<u8>,
    /// Bytes of the current message still to pass through unchanged.
    remaining: usize,
    /// The start of a message whose leading region has not all arrived yet.
    held: Vec<u8>,
    /// How far into the held message's fields the walk has reached, so a region
    /// arriving a few bytes at a time is not rewalked from its start each time.
    walked: usize,
    /// The error that broke the stream, returned again until `reset`.
    failed: Option<RewriteError>,
}

/// Where a message's leading fields end, once known.
enum Region {
    /// The region is `end` bytes of the buffer (frame header included), of a message of `len` bytes.
    Complete {
        end: usize,
        len: usize,
    },
    NeedMore,
}

impl GrpcVersionRewriter {
    /// A rewriter setting every message's `model_version` to `version`; an empty
    /// `version` removes the field, which asks Triton for the default version.
    pub fn new(version: &str) -> Self {
        let mut field = Vec::new();
        if !version.is_empty() {
            prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut field);
            prost::encoding::encode_varint(version.len() as u64, &mut field);
            field.extend_from_slice(version.as_bytes());
        }
        GrpcVersionRewriter {
            field,
            remaining: 0,
            held: Vec::new(),
            walked: 0,
            failed: None,
        }
    }

    /// Takes the next body chunk and returns the bytes to send in its place. Bytes inside a message's
    /// tensors pass through as the same `Bytes` (no copy) when a chunk lies wholly inside them; only the
    /// 5-byte frame header plus the leading fields of each message are rebuilt. Bytes of an unfinished
    /// header region are held back (an empty `Bytes` is returned) until more arrives.
    /// `end_of_stream`: no more chunks follow; held-back bytes that cannot form a message are `Malformed`.
    ///
    /// A body that ends inside a message's tensors is `Malformed` too: its bytes
    /// have been passed on, but the upstream would only see a truncated message.
    pub fn rewrite(&mut self, chunk: Bytes, end_of_stream: bool) -> Result<Bytes, RewriteError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.feed(chunk, end_of_stream);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.held = Vec::new();
        }
        result
    }

    /// Back to the start of a body, for a retry that replays it from the first byte.
    pub fn reset(&mut self) {
        self.remaining = 0;
        self.held = Vec::new();
        self.walked = 0;
        self.failed = None;
    }

    fn feed(&mut self, chunk: Bytes, end_of_stream: bool) -> Result<Bytes, RewriteError> {
        let mut pieces = Vec::new();
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len() - pos);
                pieces.push(chunk.slice(pos..pos + n));
                pos += n;
                self.remaining -= n;
            } else {
                match self.region(chunk.get(pos..).unwrap_or_default())? {
                    Some((rebuilt, used)) => {
                        pieces.push(rebuilt);
                        pos += used;
                    }
                    None => break,
                }
            }
        }
        if end_of_stream && (self.remaining > 0 || !self.held.is_empty()) {
            return Err(RewriteError::Malformed("body ends inside a gRPC message"));
        }
        Ok(join(pieces))
    }

    /// Feeds `input`, the rest of a chunk, to a message's leading region: the
    /// rebuilt region and how many bytes of `input` it took, or `None` when
    /// all of `input` was held back.
    fn region(&mut self, input: &[u8]) -> Result<Option<(Bytes, usize)>, RewriteError> {
        let before = self.held.len();
        // Without held bytes the region is read in place: most messages start
        // and finish their region within one chunk, and the chunk may be large.
        let buf: &[u8] = if before == 0 {
            input
        } else {
            let take = input.len().min((MAX_HELD + 1).saturating_sub(before));
            self.held
                .extend_from_slice(input.get(..take).unwrap_or_default());
            &self.held
        };
        match scan(buf, &mut self.walked)? {
            Region::NeedMore => {
                // The region ends past every byte here but its closing key, so it is too long.
                if buf.len() > MAX_HELD {
                    return Err(RewriteError::Malformed("model name too long"));
                }
                if before == 0 {
                    self.held.extend_from_slice(input);
                }
                Ok(None)
            }
            Region::Complete { end, len } => {
                let mut out = rebuild(buf.get(..end).unwrap_or_default(), len, &self.field)?;
                // Bytes held back past the region (the start of the next field's
                // key) are the first of the message's remaining bytes.
                let extra = buf.get(end..before).unwrap_or_default();
                out.extend_from_slice(extra);
                self.remaining = (FRAME_HEADER + len)
                    .saturating_sub(end)
                    .saturating_sub(extra.len());
                let used = end.saturating_sub(before);
                self.held = Vec::new();
                self.walked = 0;
                Ok(Some((Bytes::from(out), used)))
            }
        }
    }
}

/// Finds the end of the leading run of fields 1 and 2 of the message starting
/// at `buf`, resuming the walk at `walked` bytes into its fields.
///
/// The answer depends only on the message's bytes, never on how much of it
/// `buf` holds, so the output is the same however the body is chunked.
fn scan(buf: &[u8], walked: &mut usize) -> Result<Region, RewriteError> {
    match buf.first() {
        None | Some(0) => {}
        Some(1) => return Err(RewriteError::Compressed),
        Some(_) => return Err(RewriteError::Malformed("invalid gRPC compressed-flag byte")),
    }
    let Some(&[_, a, b, c, d]) = buf.get(..FRAME_HEADER) else {
        return Ok(Region::NeedMore);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let body = buf.get(FRAME_HEADER..).unwrap_or_default();
    let whole = body.len() >= len;
    let message = body.get(..len).unwrap_or(body);
    let complete = |walked: usize| {
        if walked > MAX_LEADING_FIELDS {
            Err(RewriteError::Malformed("model name too long"))
        } else {
            Ok(Region::Complete {
                end: FRAME_HEADER + walked,
                len,
            })
        }
    };
    loop {
        match next_field(message.get(*walked..).unwrap_or_default()) {
            Step::Field {
                number: 1 | 2,
                value: Value::Bytes(_),
                rest,
            } => *walked = message.len() - rest.len(),
            Step::Field { number: 1 | 2, .. } => {
                return Err(RewriteError::Malformed(
                    "model name or version is not a string",
                ))
            }
            // A higher field's number is all it takes to end the region; its
            // value, whole or not, is passed through for the upstream to judge.
            Step::Field { .. }
            | Step::Truncated {
                number: Some(3..), ..
            } => return complete(*walked),
            Step::End if whole => return complete(*walked),
            Step::Truncated { .. } if whole => {
                return Err(RewriteError::Malformed("truncated protobuf field"))
            }
            Step::End | Step::Truncated { .. } => return Ok(Region::NeedMore),
            Step::Malformed(reason) => return Err(RewriteError::Malformed(reason)),
        }
    }
}

/// The frame header and leading fields of a message of `len` bytes, with its
/// fields 2 replaced by `field`. `region` holds only whole fields 1 and 2.
fn rebuild(region: &[u8], len: usize, field: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let fields = region.get(FRAME_HEADER..).unwrap_or_default();
    let mut names = Vec::with_capacity(fields.len());
    let mut rest = fields;
    while let Step::Field {
        number, rest: next, ..
    } = next_field(rest)
    {
        if number == 1 {
            names.extend_from_slice(rest.get(..rest.len() - next.len()).unwrap_or_default());
        }
        rest = next;
    }
    let removed = fields.len() - names.len();
    let new_len = len
        .checked_sub(removed)
        .and_then(|kept| kept.checked_add(field.len()))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(RewriteError::Malformed("rewritten gRPC message too long"))?;
    let mut out = Vec::with_capacity(FRAME_HEADER + names.len() + field.len());
    out.push(0);
    out.extend_from_slice(&new_len.to_be_bytes());
    out.extend_from_slice(&names);
    out.extend_from_slice(field);
    Ok(out)
}

/// One `Bytes` for a chunk's output pieces, copying only when there are several.
fn join(mut pieces: Vec<Bytes>) -> Bytes {
    if pieces.len() <= 1 {
        return pieces.pop().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in &pieces {
        out.extend_from_slice(piece);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::kserve::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };
    use crate::protocol::kserve::{InferParameter, ModelInferRequest};
    use crate::protocol::testing::{frame, string_field};
    use prost::Message;
    use std::collections::HashMap;

    #[test]
    fn http_paths_get_the_version() {
        let cases = [
            ("/v2/models/m/infer", "/v2/models/m/versions/2/infer"),
            (
                "/v2/models/m/versions/1/infer",
                "/v2/models/m/versions/2/infer",
            ),
            (
                "/v2/models/m/versions/1/infer?x=1",
                "/v2/models/m/versions/2/infer?x=1",
            ),
            (
                "/v2/models/m/infer?x=1&y",
                "/v2/models/m/versions/2/infer?x=1&y",
            ),
            ("/v2/models/m", "/v2/models/m/versions/2"),
            ("/v2/models/m?x=1", "/v2/models/m/versions/2?x=1"),
            ("/v2/models/m/versions/1", "/v2/models/m/versions/2"),
            ("/v2/models/m/ready", "/v2/models/m/versions/2/ready"),
            (
                "/v2/models/m/versions/1/ready",
                "/v2/models/m/versions/2/ready",
            ),
            ("/v2/models/m/stats", "/v2/models/m/versions/2/stats"),
            (
                "/v2/models/a%2Fb/infer",
                "/v2/models/a%2Fb/versions/2/infer",
            ),
            (
                "/v2/models/a%2Fb/versions/7/infer",
                "/v2/models/a%2Fb/versions/2/infer",
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(
                http_path_with_version(path, "2").as_deref(),
                Some(expected),
                "{path}"
            );
        }
    }

    #[test]
    fn an_empty_http_version_removes_the_segment() {
        assert_eq!(
            http_path_with_version("/v2/models/m/versions/1/infer?x=1", "").as_deref(),
            Some("/v2/models/m/infer?x=1")
        );
        assert_eq!(
            http_path_with_version("/v2/models/m/versions/1", "").as_deref(),
            Some("/v2/models/m")
        );
        assert_eq!(
            http_path_with_version("/v2/models/m/infer", "").as_deref(),
            Some("/v2/models/m/infer")
        );
    }

    #[test]
    fn http_paths_without_a_model_are_left_alone() {
        for path in [
            "/v2",
            "/v2/",
            "/v2/models",
            "/v2/models/",
            "/v2/models/?x=1",
            "/v2/models//infer",
            "/v2/models/stats",
            "/v2/health/ready",
            "/v2/repository/index",
            "/v2/repository/models/m/load",
            "/metrics",
            "/",
            "",
        ] {
            assert_eq!(http_path_with_version(path, "2"), None, "{path}");
        }
    }

    fn request(version: &str, raw: Vec<u8>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "resnet50".into(),
            model_version: version.into(),
            id: "req-7".into(),
            parameters: HashMap::from([("sequence_id".into(), InferParameter::int64(42))]),
            inputs: vec![InferInputTensor {
                name: "INPUT0".into(),
                datatype: "UINT8".into(),
                shape: vec![1, raw.len() as i64],
                ..Default::default()
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: "OUTPUT0".into(),
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from(raw)],
        }
    }

    fn body(requests: &[ModelInferRequest]) -> Vec<u8> {
        requests
            .iter()
            .flat_map(|r| frame(0, &r.encode_to_vec()))
            .collect()
    }

    /// The messages of a body, which must be well framed and uncompressed.
    fn decode(mut body: &[u8]) -> Vec<ModelInferRequest> {
        let mut out = Vec::new();
        while !body.is_empty() {
            assert_eq!(body[0], 0);
            let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            out.push(ModelInferRequest::decode(&body[5..5 + len]).unwrap());
            body = &body[5 + len..];
        }
        out
    }

    /// Feeds `body` cut at `cuts` (ascending), and joins the outputs.
    fn rewrite_cut(
        rewriter: &mut GrpcVersionRewriter,
        body: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<u8>, RewriteError> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &cut) in cuts.iter().chain([body.len()].iter()).enumerate() {
            let chunk = Bytes::copy_from_slice(&body[start..cut]);
            out.extend_from_slice(&rewriter.rewrite(chunk, i == cuts.len())?);
            start = cut;
        }
        Ok(out)
    }

    fn rewrite_whole(version: &str, body: &[u8]) -> Result<Vec<u8>, RewriteError> {
        rewrite_cut(&mut GrpcVersionRewriter::new(version), body, &[])
    }

    fn with_version(requests: &[ModelInferRequest], version: &str) -> Vec<ModelInferRequest> {
        requests
            .iter()
            .map(|r| ModelInferRequest {
                model_version: version.into(),
                ..r.clone()
            })
            .collect()
    }

    fn sample_stream() -> Vec<ModelInferRequest> {
        vec![request("1", vec![1, 2, 3, 4]), request("", vec![9; 20])]
    }

    #[test]
    fn grpc_version_is_replaced_added_or_removed() {
        for original in ["", "1", "a-long-version-string"] {
            for new in ["", "2", "12345"] {
                let requests = [request(original, (0..=255).collect())];
                let out = rewrite_whole(new, &body(&requests)).unwrap();
                assert_eq!(
                    decode(&out),
                    with_version(&requests, new),
                    "{original} -> {new}"
                );
            }
        }
    }

    #[test]
    fn every_message_of_a_stream_is_rewritten() {
        let requests = sample_stream();
        let out = rewrite_whole("3", &body(&requests)).unwrap();
        assert_eq!(decode(&out), with_version(&requests, "3"));
    }

    #[test]
    fn short_and_empty_messages() {
        let name_only = ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        };
        let requests = [
            name_only,
            ModelInferRequest::default(),
            request("5", vec![]),
        ];
        for new in ["", "2"] {
            let input = body(&requests);
            let out = rewrite_whole(new, &input).unwrap();
            assert_eq!(decode(&out), with_version(&requests, new));
            for cut in 0..=input.len() {
                assert_eq!(
                    rewrite_cut(&mut GrpcVersionRewriter::new(new), &input, &[cut]).unwrap(),
                    out
                );
            }
        }
        assert_eq!(rewrite_whole("2", &[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn output_is_the_same_however_the_body_is_chunked() {
        let input = body(&sample_stream());
        let expected = rewrite_whole("2", &input).unwrap();
        let mut rewriter = GrpcVersionRewriter::new("2");
        for first in 0..=input.len() {
            for second in first..=input.len() {
                rewriter.reset();
                assert_eq!(
                    rewrite_cut(&mut rewriter, &input, &[first, second]).unwrap(),
                    expected,
                    "cuts {first}, {second}"
                );
            }
        }
        let every_byte: Vec<usize> = (1..input.len()).collect();
        rewriter.reset();
        assert_eq!(
            rewrite_cut(&mut rewriter, &input, &every_byte).unwrap(),
            expected
        );
    }

    #[test]
    fn random_chunk_sizes() {
        let requests: Vec<_> = (0..5)
            .map(|i| request(&i.to_string(), vec![i as u8; 300 * i]))
            .collect();
        let input = body(&requests);
        let expected = rewrite_whole("9", &input).unwrap();
        assert_eq!(decode(&expected), with_version(&requests, "9"));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                at += rng.usize(0..64);
                if at >= input.len() {
                    break;
                }
                cuts.push(at);
            }
            let mut rewriter = GrpcVersionRewriter::new("9");
            assert_eq!(rewrite_cut(&mut rewriter, &input, &cuts).unwrap(), expected);
        }
    }

    #[test]
    fn tensor_chunks_pass_through_without_a_copy() {
        let raw: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7) as u8).collect();
        let requests = [request("1", raw)];
        let input = Bytes::from(body(&requests));
        let mut rewriter = GrpcVersionRewriter::new("2");
        let mut out = Vec::new();
        let chunks: Vec<Bytes> = input
            .chunks(16 * 1024)
            .map(|c| input.slice_ref(c))
            .collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let rewritten = rewriter.rewrite(chunk.clone(), last).unwrap();
            // The leading fields are all in the first chunk; the rest are tensor bytes.
            if i > 0 {
                assert_eq!(rewritten.as_ptr(), chunk.as_ptr(), "chunk {i}");
                assert_eq!(rewritten.len(), chunk.len());
            }
            out.extend_from_slice(&rewritten);
        }
        assert_eq!(decode(&out), with_version(&requests, "2"));
    }

    #[test]
    fn compressed_messages_are_refused() {
        let message = request("1", vec![1; 10]).encode_to_vec();
        let mut rewriter = GrpcVersionRewriter::new("2");
        assert_eq!(
            rewriter.rewrite(Bytes::from(frame(1, &message)), true),
            Err(RewriteError::Compressed)
        );
        // A compressed second message of a stream, once the first went through.
        let mut input = body(&[request("1", vec![])]);
        input.extend_from_slice(&frame(1, &message));
        assert_eq!(rewrite_whole("2", &input), Err(RewriteError::Compressed));
    }

    #[test]
    fn errors_are_final_until_reset() {
        let mut rewriter = GrpcVersionRewriter::new("2");
        let err = rewriter.rewrite(Bytes::from_static(&[1, 0]), false);
        assert_eq!(err, Err(RewriteError::Compressed));
        let good = Bytes::from(body(&[request("1", vec![])]));
        assert_eq!(rewriter.rewrite(good.clone(), true), err);
        rewriter.reset();
        let out = rewriter.rewrite(good, true).unwrap();
        assert_eq!(decode(&out), vec![request("2", vec![])]);
    }

    #[test]
    fn truncated_bodies_are_malformed() {
        let input = body(&sample_stream());
        let between_messages = body(&sample_stream()[..1]).len();
        for cut in (1..input.len()).filter(|&cut| cut != between_messages) {
            let result = rewrite_whole("2", &input[..cut]);
            assert!(
                matches!(result, Err(RewriteError::Malformed(_))),
                "cut {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn bad_framing_and_fields_are_malformed() {
        let mut name_as_varint = vec![0x08, 1];
        string_field(3, b"id", &mut name_as_varint);
        let cases: [&[u8]; 4] = [
            &[2, 0, 0, 0, 0],
            &frame(0, &name_as_varint),
            &frame(0, &[0x0a, 100, b'a']),
            &frame(0, &[0x0b]),
        ];
        for case in cases {
            let result = rewrite_whole("2", case);
            assert!(
                matches!(result, Err(RewriteError::Malformed(_))),
                "{case:?}: {result:?}"
            );
        }
    }

    #[test]
    fn a_huge_model_name_is_refused_with_bounded_memory() {
        let name = "n".repeat(MAX_LEADING_FIELDS + 1);
        let input = body(&[ModelInferRequest {
            model_name: name.clone(),
            ..request("1", vec![])
        }]);
        let too_long = Err(RewriteError::Malformed("model name too long"));
        assert_eq!(rewrite_whole("2", &input), too_long);
        let mut rewriter = GrpcVersionRewriter::new("2");
        for chunk in input.chunks(1000) {
            if let Err(e) = rewriter.rewrite(Bytes::copy_from_slice(chunk), false) {
                assert_eq!(Err(e), too_long);
                break;
            }
            assert!(rewriter.held.len() <= MAX_HELD);
        }
        assert!(rewriter.failed.is_some());
        // Just under the limit is fine.
        let name = "n".repeat(MAX_LEADING_FIELDS - 10);
        let requests = [ModelInferRequest {
            model_name: name,
            ..request("1", vec![])
        }];
        let input = body(&requests);
        let cuts: Vec<usize> = (1000..input.len()).step_by(1000).collect();
        let out = rewrite_cut(&mut GrpcVersionRewriter::new("2"), &input, &cuts).unwrap();
        assert_eq!(decode(&out), with_version(&requests, "2"));
    }

    #[test]
    fn fields_out_of_order() {
        // Version before name: both are in the leading run, so the version is replaced.
        let mut message = Vec::new();
        string_field(2, b"1", &mut message);
        string_field(1, b"m", &mut message);
        string_field(2, b"1", &mut message);
        string_field(3, b"id", &mut message);
        let out = rewrite_whole("2", &frame(0, &message)).unwrap();
        let decoded = decode(&out);
        assert_eq!(decoded[0].model_version, "2");
        assert_eq!(decoded[0].model_name, "m");
        // A version after a tensor field is not looked for, and wins (documented).
        let mut message = Vec::new();
        string_field(1, b"m", &mut message);
        string_field(3, b"id", &mut message);
        string_field(2, b"1", &mut message);
        let out = rewrite_whole("2", &frame(0, &message)).unwrap();
        assert_eq!(decode(&out)[0].model_version, "1");
    }

    #[test]
    fn reset_replays_a_body_identically() {
        let input = body(&sample_stream());
        let expected = rewrite_whole("4", &input).unwrap();
        let mut rewriter = GrpcVersionRewriter::new("4");
        // An abandoned first attempt, cut inside the leading fields of a message.
        let _ = rewriter.rewrite(Bytes::copy_from_slice(&input[..8]), false);
        rewriter.reset();
        assert_eq!(
            rewrite_cut(&mut rewriter, &input, &[3, 40]).unwrap(),
            expected
        );
        rewriter.reset();
        assert_eq!(rewrite_cut(&mut rewriter, &input, &[]).unwrap(), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_never_matters() {
        let mut rng = fastrand::Rng::with_seed(7);
        let valid = body(&sample_stream());
        for round in 0..4000 {
            let input: Vec<u8> = if round % 2 == 0 {
                (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect()
            } else {
                // A valid body with a few bytes changed, to get past the framing.
                let mut mutated = valid.clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..mutated.len());
                    mutated[at] = rng.u8(..);
                }
                mutated.truncate(rng.usize(..=mutated.len()));
                mutated
            };
            let version = if round % 3 == 0 { "" } else { "2" };
            let whole = rewrite_whole(version, &input);
            let mut cuts: Vec<usize> = (0..rng.usize(0..6))
                .map(|_| rng.usize(..=input.len()))
                .collect();
            cuts.sort_unstable();
            let chunked = rewrite_cut(&mut GrpcVersionRewriter::new(version), &input, &cuts);
            assert_eq!(whole, chunked, "{input:?} cut at {cuts:?}");
        }
    }
}
