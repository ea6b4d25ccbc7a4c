//! Just enough of gRPC and protobuf to read the model a
//! `inference.GRPCInferenceService` call addresses, from the first bytes of
//! its first message, without decoding (or copying) the rest. The rest is
//! checked as it streams upstream by [`super::model_check`].

use std::borrow::Cow;
use std::io::Read;

use flate2::read::{GzDecoder, ZlibDecoder};

use super::json_batch::BatchPeek;

const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";

/// gRPC status codes Trident itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 9] = [
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::Unauthenticated,
    ];

    /// The code numbered `code`, if it is one Trident answers with.
    pub fn from_code(code: u8) -> Option<GrpcCode> {
        GrpcCode::ALL.into_iter().find(|c| *c as u8 == code)
    }
}

/// Every gRPC status code's name, indexed by code.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `grpc-status` in response headers (trailers-only) or trailers.
pub fn status(headers: &http::HeaderMap) -> Option<u8> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The code named `name` (`"UNAVAILABLE"`, any case).
pub fn code_from_name(name: &str) -> Option<u8> {
    let code = CODE_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))?;
    u8::try_from(code).ok()
}

/// The call's `grpc-timeout` header: at most 8 digits and a unit, per the gRPC spec.
pub fn timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Which protobuf field of a method's request message holds the model name.
///
/// Server-level methods (health, server metadata, repository index, shared
/// memory, logging) and other services return `None`: they go to the default route.
pub fn model_field_for_method(path: &str) -> Option<u32> {
    let method = path.strip_prefix(SERVICE_PREFIX)?;
    match method {
        "ModelReady" | "ModelMetadata" | "ModelInfer" | "ModelStreamInfer" | "ModelConfig"
        | "ModelStatistics" => Some(1),
        "RepositoryModelLoad" | "RepositoryModelUnload" | "TraceSetting" => Some(2),
        _ => None,
    }
}

/// Whether a call of this method without a model name is a server-level call:
/// `ModelStatistics` then covers every model, `TraceSetting` the global settings.
/// Other model-scoped calls need a name.
pub fn name_is_optional(path: &str) -> bool {
    matches!(
        path.strip_prefix(SERVICE_PREFIX),
        Some("ModelStatistics" | "TraceSetting")
    )
}

/// Whether `path` is an infer call, whose first message carries the inputs.
pub fn is_infer_method(path: &str) -> bool {
    matches!(
        path.strip_prefix(SERVICE_PREFIX),
        Some("ModelInfer" | "ModelStreamInfer")
    )
}

/// Whether `path` is a streaming infer call: its answer may last as long as the client keeps it.
pub fn is_streaming_method(path: &str) -> bool {
    path.strip_prefix(SERVICE_PREFIX) == Some("ModelStreamInfer")
}

/// Message compression named by the request's `grpc-encoding` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// gRPC's "deflate" is the zlib format.
    Deflate,
    /// Anything else (the tokens are case-sensitive): compressed messages cannot be read.
    Unsupported,
}

impl Encoding {
    pub fn from_header(value: Option<&[u8]>) -> Self {
        match value {
            None | Some(b"identity") => Encoding::Identity,
            Some(b"gzip") => Encoding::Gzip,
            Some(b"deflate") => Encoding::Deflate,
            Some(_) => Encoding::Unsupported,
        }
    }
}

/// The outcome of looking for the model name in the buffered start of a request body.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// The field is present: its (UTF-8) value.
    Model(String),
    /// The whole first message was read and the field is absent (or empty).
    Absent,
    /// The field may still come: read more body.
    NeedMore,
    /// The bytes cannot be a valid message; the reason.
    Malformed(&'static str),
    /// The message is compressed in an encoding Trident cannot read.
    Unreadable,
}

/// Looks for string field `field` in the first length-prefixed gRPC message of `body`.
///
/// `body_complete` says no more bytes will come, so a short buffer is final.
pub fn peek_model(body: &[u8], field: u32, encoding: Encoding, body_complete: bool) -> Peek {
    match first_message(body, encoding, body_complete) {
        Ok((message, whole)) => scan_for_string(&message, u64::from(field), whole),
        Err(early) => early,
    }
}

/// `ModelInferRequest.inputs`, and `InferInputTensor.shape` within it.
const INFER_INPUTS: u64 = 5;
const TENSOR_SHAPE: u64 = 3;

/// The batch size of a `ModelInfer` / `ModelStreamInfer` request: the first
/// dimension of its first input's shape, from the start of its first message.
pub fn peek_batch_size(body: &[u8], encoding: Encoding, body_complete: bool) -> BatchPeek {
    let (message, whole) = match first_message(body, encoding, body_complete) {
        Ok(found) => found,
        Err(Peek::NeedMore) => return BatchPeek::NeedMore,
        Err(_) => return BatchPeek::Absent,
    };
    let more = if whole {
        BatchPeek::Absent
    } else {
        BatchPeek::NeedMore
    };
    let mut rest: &[u8] = &message;
    loop {
        match next_field(rest) {
            Step::Field {
                number: INFER_INPUTS,
                value: Value::Bytes(tensor),
                ..
            } => return first_dimension(tensor, true),
            Step::Truncated {
                number: Some(INFER_INPUTS),
                partial,
            } if !whole => return first_dimension(partial, false),
            Step::Field { rest: next, .. } => rest = next,
            Step::End | Step::Truncated { .. } => return more,
            Step::Malformed(_) => return BatchPeek::Absent,
        }
    }
}

/// The first element of an `InferInputTensor`'s `shape` (packed or not).
fn first_dimension(tensor: &[u8], whole: bool) -> BatchPeek {
    let more = if whole {
        BatchPeek::Absent
    } else {
        BatchPeek::NeedMore
    };
    let dimension = |value: u64| match i64::try_from(value) {
        Ok(_) => BatchPeek::Found(value),
        Err(_) => BatchPeek::Absent,
    };
    let mut rest = tensor;
    loop {
        match next_field(rest) {
            Step::Field {
                number: TENSOR_SHAPE,
                value: Value::Varint(value),
                ..
            } => return dimension(value),
            Step::Field {
                number: TENSOR_SHAPE,
                value: Value::Bytes(packed),
                ..
            } => return read_varint(packed).map_or(BatchPeek::Absent, |(v, _)| dimension(v)),
            Step::Truncated {
                number: Some(TENSOR_SHAPE),
                partial,
            } if !whole => return read_varint(partial).map_or(more, |(v, _)| dimension(v)),
            Step::Field { rest: next, .. } => rest = next,
            Step::End | Step::Truncated { .. } => return more,
            Step::Malformed(_) => return BatchPeek::Absent,
        }
    }
}

/// The start of the first length-prefixed message of `body`, decompressed,
/// and whether it is the whole message; or the final answer when there is none.
pub(super) fn first_message(
    body: &[u8],
    encoding: Encoding,
    body_complete: bool,
) -> Result<(Cow<'_, [u8]>, bool), Peek> {
    let Some(prefix) = body.get(..5) else {
        return Err(if body_complete {
            if body.is_empty() {
                Peek::Absent
            } else {
                Peek::Malformed("truncated gRPC message prefix")
            }
        } else {
            Peek::NeedMore
        });
    };
    let compressed = match prefix[0] {
        0 => false,
        1 => true,
        _ => return Err(Peek::Malformed("invalid gRPC compressed-flag byte")),
    };
    let message_len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let available = &body[5..];
    let whole = available.len() >= message_len;
    let payload = &available[..available.len().min(message_len)];
    if !compressed {
        return Ok((Cow::Borrowed(payload), whole));
    }
    match encoding {
        Encoding::Identity => Err(Peek::Malformed(
            "compressed gRPC message without grpc-encoding",
        )),
        Encoding::Unsupported => Err(Peek::Unreadable),
        Encoding::Gzip | Encoding::Deflate => match inflate_prefix(payload, encoding) {
            (inflated, Inflated::Whole) => Ok((Cow::Owned(inflated), whole)),
            (_, Inflated::Stopped) if whole => {
                Err(Peek::Malformed("gRPC message does not decompress"))
            }
            (inflated, Inflated::Stopped | Inflated::Capped) => Ok((Cow::Owned(inflated), false)),
        },
    }
}

/// The most bytes a peek inflates. The peeked fields come first, and without a
/// bound a buffered 64 KiB of compressed zeros would inflate to 64 MiB per peek.
const MAX_PEEK_INFLATED: usize = 1 << 20;

/// How far [`inflate_prefix`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inflated {
    /// The stream ended cleanly: the output is all the data.
    Whole,
    /// The stream is truncated or corrupt: the output is a prefix of the data.
    Stopped,
    /// The output reached [`MAX_PEEK_INFLATED`]: a prefix, and more would follow.
    Capped,
}

/// Inflates as much of a gzip or zlib stream as `compressed` holds, up to
/// [`MAX_PEEK_INFLATED`] bytes. A truncated stream inflates as far as it goes,
/// then errors: what came out before the error is a prefix of the data.
pub(super) fn inflate_prefix(compressed: &[u8], encoding: Encoding) -> (Vec<u8>, Inflated) {
    let mut inflated = Vec::new();
    let limit = MAX_PEEK_INFLATED as u64 + 1;
    let result = match encoding {
        Encoding::Gzip => GzDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut inflated),
        Encoding::Deflate => ZlibDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut inflated),
        Encoding::Identity | Encoding::Unsupported => {
            return (compressed.to_vec(), Inflated::Whole)
        }
    };
    let how_far = if inflated.len() > MAX_PEEK_INFLATED {
        inflated.truncate(MAX_PEEK_INFLATED);
        Inflated::Capped
    } else if result.is_ok() {
        Inflated::Whole
    } else {
        Inflated::Stopped
    };
    (inflated, how_far)
}

/// Walks protobuf fields in `message` until string field `field` is found.
fn scan_for_string(mut message: &[u8], field: u64, whole: bool) -> Peek {
    loop {
        match next_field(message) {
            Step::Field {
                number,
                value: Value::Bytes(value),
                ..
            } if number == field => {
                return match std::str::from_utf8(value) {
                    Ok("") => Peek::Absent,
                    Ok(name) => match super::name_problem(name) {
                        Some(problem) => Peek::Malformed(problem),
                        None => Peek::Model(name.to_owned()),
                    },
                    Err(_) => Peek::Malformed("model name is not UTF-8"),
                }
            }
            Step::Field { rest, .. } => message = rest,
            Step::End if whole => return Peek::Absent,
            Step::Truncated { .. } if whole => return Peek::Malformed("truncated protobuf field"),
            Step::End | Step::Truncated { .. } => return Peek::NeedMore,
            Step::Malformed(reason) => return Peek::Malformed(reason),
        }
    }
}

/// A protobuf field's value, as far as peeking needs it.
pub(super) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32,
    Fixed64,
}

/// One step of a walk over protobuf fields.
pub(super) enum Step<'a> {
    Field {
        number: u64,
        value: Value<'a>,
        rest: &'a [u8],
    },
    /// No more bytes.
    End,
    /// The bytes end inside a field: its number when known, and for a
    /// length-delimited field the part of its value that is there.
    Truncated {
        number: Option<u64>,
        partial: &'a [u8],
    },
    Malformed(&'static str),
}

pub(super) fn next_field(message: &[u8]) -> Step<'_> {
    if message.is_empty() {
        return Step::End;
    }
    let truncated = |number| Step::Truncated {
        number,
        partial: &[],
    };
    let Some((key, rest)) = read_varint(message) else {
        return truncated(None);
    };
    let number = key >> 3;
    if number == 0 {
        return Step::Malformed("protobuf field number 0");
    }
    let fixed = |width: usize, value| match rest.get(width..) {
        Some(rest) => Step::Field {
            number,
            value,
            rest,
        },
        None => truncated(Some(number)),
    };
    match key & 7 {
        0 => match read_varint(rest) {
            Some((value, rest)) => Step::Field {
                number,
                value: Value::Varint(value),
                rest,
            },
            None => truncated(Some(number)),
        },
        1 => fixed(8, Value::Fixed64),
        5 => fixed(4, Value::Fixed32),
        2 => match read_varint(rest) {
            Some((len, rest)) => match usize::try_from(len).ok().filter(|&l| l <= rest.len()) {
                Some(len) => Step::Field {
                    number,
                    value: Value::Bytes(&rest[..len]),
                    rest: &rest[len..],
                },
                None => Step::Truncated {
                    number: Some(number),
                    partial: rest,
                },
            },
            None => truncated(Some(number)),
        },
        _ => Step::Malformed("unsupported protobuf wire type"),
    }
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec asks.
pub fn encode_grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::testing::{frame, string_field, varint};
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    #[test]
    fn codes_are_known_by_their_number() {
        for code in GrpcCode::ALL {
            assert_eq!(GrpcCode::from_code(code as u8), Some(code));
        }
        assert_eq!(
            GrpcCode::from_code(2),
            None,
            "UNKNOWN is not one Trident answers"
        );
    }

    fn infer_request(model: &str) -> Vec<u8> {
        let mut m = Vec::new();
        string_field(1, model.as_bytes(), &mut m);
        string_field(3, b"req-1", &mut m);
        string_field(7, &vec![7u8; 4096], &mut m);
        m
    }

    #[test]
    fn finds_model_name_in_first_field() {
        let body = frame(0, &infer_request("resnet50"));
        assert_eq!(
            peek_model(&body, 1, Encoding::Identity, true),
            Peek::Model("resnet50".into())
        );
        // Only the first few bytes are needed.
        assert_eq!(
            peek_model(&body[..20], 1, Encoding::Identity, false),
            Peek::Model("resnet50".into())
        );
    }

    #[test]
    fn every_split_point_is_either_need_more_or_the_answer() {
        let body = frame(0, &infer_request("bert"));
        for cut in 0..body.len() {
            let peek = peek_model(&body[..cut], 1, Encoding::Identity, false);
            assert!(
                matches!(peek, Peek::NeedMore) || peek == Peek::Model("bert".into()),
                "cut {cut}: {peek:?}"
            );
        }
    }

    #[test]
    fn skips_other_fields_to_reach_a_later_one() {
        let mut m = Vec::new();
        string_field(1, b"repo", &mut m);
        varint(3 << 3, &mut m); // a varint field before the name
        varint(300, &mut m);
        m.extend_from_slice(&[(4 << 3) | 5, 1, 2, 3, 4]); // fixed32
        m.push((6 << 3) | 1); // fixed64
        m.extend_from_slice(&[0; 8]);
        string_field(2, b"bert", &mut m);
        assert_eq!(
            peek_model(&frame(0, &m), 2, Encoding::Identity, true),
            Peek::Model("bert".into())
        );
    }

    #[test]
    fn absent_and_empty_names_go_to_the_default_route() {
        assert_eq!(
            peek_model(&frame(0, &[]), 1, Encoding::Identity, true),
            Peek::Absent
        );
        let mut m = Vec::new();
        string_field(1, b"", &mut m);
        assert_eq!(
            peek_model(&frame(0, &m), 1, Encoding::Identity, true),
            Peek::Absent
        );
        assert_eq!(peek_model(&[], 1, Encoding::Identity, true), Peek::Absent);
    }

    #[test]
    fn malformed_input_is_reported_not_panicked_on() {
        assert!(matches!(
            peek_model(&[9, 0, 0, 0, 1, 0], 1, Encoding::Identity, true),
            Peek::Malformed(_)
        ));
        assert!(matches!(
            peek_model(&[0, 0, 0], 1, Encoding::Identity, true),
            Peek::Malformed(_)
        ));
        // length says 100 bytes of string but the message ends
        assert!(matches!(
            peek_model(&frame(0, &[0x0a, 100, b'a']), 1, Encoding::Identity, true),
            Peek::Malformed(_)
        ));
        assert!(matches!(
            peek_model(
                &frame(0, &[0x0a, 2, 0xff, 0xfe]),
                1,
                Encoding::Identity,
                true
            ),
            Peek::Malformed(_)
        ));
        assert!(matches!(
            peek_model(&frame(0, &[0x0b]), 1, Encoding::Identity, true),
            Peek::Malformed(_)
        ));
        assert!(matches!(
            peek_model(&frame(0, &[0xff; 12]), 1, Encoding::Identity, true),
            Peek::Malformed(_)
        ));
        assert!(matches!(
            peek_model(&frame(1, b"junk"), 1, Encoding::Gzip, true),
            Peek::Malformed(_)
        ));
        // A C string would end at the NUL: the name Triton reads is not the one routed on.
        assert!(matches!(
            peek_model(&frame(0, b"\x0a\x02m\x00"), 1, Encoding::Identity, true),
            Peek::Malformed(_)
        ));
    }

    #[test]
    fn compressed_messages_in_unknown_encodings_are_unreadable() {
        for header in [&b"GZIP"[..], b"br", b"snappy"] {
            let encoding = Encoding::from_header(Some(header));
            assert_eq!(
                peek_model(&frame(1, b"anything"), 1, encoding, true),
                Peek::Unreadable
            );
            // Uncompressed messages need no encoding.
            assert_eq!(
                peek_model(&frame(0, b"\x0a\x01m"), 1, encoding, true),
                Peek::Model("m".into())
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for encoding in [Encoding::Identity, Encoding::Gzip, Encoding::Deflate] {
                let _ = peek_model(&bytes, 1, encoding, len % 2 == 0);
            }
        }
    }

    #[test]
    fn gzip_messages_are_inflated_even_when_truncated() {
        let mut message = Vec::new();
        string_field(1, b"densenet", &mut message);
        // Incompressible tensor bytes, so the compressed stream is long too.
        let noise: Vec<u8> = (0..16_384u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        string_field(7, &noise, &mut message);
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&message).unwrap();
        let body = frame(1, &encoder.finish().unwrap());
        assert_eq!(
            peek_model(&body, 1, Encoding::Gzip, true),
            Peek::Model("densenet".into())
        );
        assert_eq!(
            peek_model(&body[..body.len() / 2], 1, Encoding::Gzip, false),
            Peek::Model("densenet".into())
        );
    }

    #[test]
    fn a_compressed_bomb_inflates_only_a_bounded_prefix() {
        // A 64 KiB peek buffer of gzip-compressed zeros would inflate to ~64 MiB, per
        // peek (model, sequence, batch) and per buffered chunk.
        let mut message = Vec::new();
        string_field(1, b"densenet", &mut message);
        string_field(7, &vec![0; 32 << 20], &mut message);
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&message).unwrap();
        let compressed = encoder.finish().unwrap();
        let (inflated, _) = inflate_prefix(&compressed, Encoding::Gzip);
        assert!(inflated.len() <= MAX_PEEK_INFLATED, "{}", inflated.len());
        // What lies within the bound is still read, and the rest is not called corrupt.
        let body = frame(1, &compressed);
        assert_eq!(
            peek_model(&body, 1, Encoding::Gzip, true),
            Peek::Model("densenet".into())
        );
        assert_eq!(peek_model(&body, 3, Encoding::Gzip, true), Peek::NeedMore);
    }

    #[test]
    fn method_fields() {
        assert_eq!(
            model_field_for_method("/inference.GRPCInferenceService/ModelInfer"),
            Some(1)
        );
        assert_eq!(
            model_field_for_method("/inference.GRPCInferenceService/ModelStreamInfer"),
            Some(1)
        );
        assert_eq!(
            model_field_for_method("/inference.GRPCInferenceService/RepositoryModelLoad"),
            Some(2)
        );
        assert_eq!(
            model_field_for_method("/inference.GRPCInferenceService/ServerLive"),
            None
        );
        assert_eq!(model_field_for_method("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn grpc_message_encoding() {
        assert_eq!(
            encode_grpc_message("no route for 'x' 100%"),
            "no route for 'x' 100%25"
        );
        assert_eq!(encode_grpc_message("é\n"), "%C3%A9%0A");
    }

    fn tensor(shape: &[i64], packed: bool) -> Vec<u8> {
        let mut t = Vec::new();
        string_field(1, b"INPUT0", &mut t);
        string_field(2, b"FP32", &mut t);
        if packed {
            let mut dims = Vec::new();
            for &d in shape {
                varint(d as u64, &mut dims);
            }
            string_field(3, &dims, &mut t);
        } else {
            for &d in shape {
                varint(3 << 3, &mut t);
                varint(d as u64, &mut t);
            }
        }
        t
    }

    fn infer_with_inputs(inputs: &[Vec<u8>]) -> Vec<u8> {
        let mut m = Vec::new();
        string_field(1, b"resnet50", &mut m);
        string_field(3, b"req-1", &mut m);
        for input in inputs {
            string_field(5, input, &mut m);
        }
        string_field(7, &vec![7u8; 4096], &mut m);
        m
    }

    #[test]
    fn batch_size_is_the_first_dimension_of_the_first_input() {
        for packed in [true, false] {
            let body = frame(
                0,
                &infer_with_inputs(&[tensor(&[8, 3, 224], packed), tensor(&[5], packed)]),
            );
            assert_eq!(
                peek_batch_size(&body, Encoding::Identity, true),
                BatchPeek::Found(8)
            );
            // Every prefix gives NeedMore or the answer, never a wrong one.
            for cut in 0..body.len() {
                let peek = peek_batch_size(&body[..cut], Encoding::Identity, false);
                assert!(
                    matches!(peek, BatchPeek::NeedMore | BatchPeek::Found(8)),
                    "cut {cut}: {peek:?}"
                );
            }
        }
    }

    #[test]
    fn batch_size_absent_without_inputs_or_shape() {
        let no_inputs = frame(0, &infer_request("m"));
        assert_eq!(
            peek_batch_size(&no_inputs, Encoding::Identity, true),
            BatchPeek::Absent
        );
        let empty_shape = frame(0, &infer_with_inputs(&[tensor(&[], true)]));
        assert_eq!(
            peek_batch_size(&empty_shape, Encoding::Identity, true),
            BatchPeek::Absent
        );
        let negative = frame(0, &infer_with_inputs(&[tensor(&[-1, 4], false)]));
        assert_eq!(
            peek_batch_size(&negative, Encoding::Identity, true),
            BatchPeek::Absent
        );
        assert_eq!(
            peek_batch_size(b"\x05garbage", Encoding::Identity, true),
            BatchPeek::Absent
        );
    }

    #[test]
    fn batch_size_of_compressed_messages() {
        let message = infer_with_inputs(&[tensor(&[16, 4], true)]);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&message).unwrap();
        let body = frame(1, &gz.finish().unwrap());
        assert_eq!(
            peek_batch_size(&body, Encoding::Gzip, true),
            BatchPeek::Found(16)
        );
    }

    #[test]
    fn batch_peek_never_panics_on_arbitrary_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let _ = peek_batch_size(&bytes, Encoding::Identity, seed & 1 == 0);
            let _ = peek_batch_size(&bytes, Encoding::Gzip, true);
        }
    }
}
