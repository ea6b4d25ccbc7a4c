//! What each fuzz target checks, one function per target (`fuzz_targets/NAME.rs` calls
//! `NAME`). The same functions replay the committed corpora in `tests/fuzz_corpora.rs`, so
//! plain `cargo test` on stable runs every corpus file through the checks `cargo fuzz` runs.
//!
//! Every parser here reads client, upstream or operator bytes; a check calls it and asserts
//! the cheap invariants of its answer. Inputs that steer a parser (encoding, completeness,
//! where to cut a body) come from the first bytes of the fuzz input, see each function.
#![forbid(unsafe_code)]

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use filters::jwt::{Algorithm, KeySet, ValidationSettings, Verifier};
use filters::mirror::compare::{compare, Answer, Tolerance};
use filters::triton_load::{self, LoadTracker};
use http::{HeaderMap, HeaderValue};
use prost::Message;
use trident::protocol::grpc::{self, Encoding, Peek};
use trident::protocol::http_body::{self, INFERENCE_HEADER_CONTENT_LENGTH};
use trident::protocol::json_batch::{self, BatchPeek};
use trident::protocol::kserve::ModelInferRequest;
use trident::protocol::model_check::{ModelCheck, Violation};
use trident::protocol::sequence::{self, SequencePeek};
use trident::protocol::version_rewrite::GrpcVersionRewriter;
use trident::protocol::{infer_response, Protocol};

/// A target's check: panics when the parser breaks an invariant.
pub type Check = fn(&[u8]);

/// Every target, by name: its corpus is `fuzz/corpus/NAME`.
pub const TARGETS: [(&str, Check); 8] = [
    ("grpc_peek", grpc_peek),
    ("http_peek", http_peek),
    ("version_rewrite", version_rewrite),
    ("infer_response", infer_response),
    ("triton_metrics", triton_metrics),
    ("jwt_token", jwt_token),
    ("jwks", jwks),
    ("config", config),
];

const ENCODINGS: [Encoding; 4] = [
    Encoding::Identity,
    Encoding::Gzip,
    Encoding::Deflate,
    Encoding::Unsupported,
];

/// The options byte leading most inputs: an encoding, whether the body is complete, and
/// a cut point (a fraction of the body in 1/16ths) for the prefix-consistency checks.
struct Options {
    encoding: Encoding,
    complete: bool,
    cut_sixteenths: usize,
    /// The remaining bit, free for the target.
    extra: bool,
}

fn options(data: &[u8]) -> Option<(Options, &[u8])> {
    let (&byte, rest) = data.split_first()?;
    let options = Options {
        encoding: ENCODINGS[usize::from(byte & 3)],
        complete: byte & 4 != 0,
        extra: byte & 8 != 0,
        cut_sixteenths: usize::from(byte >> 4),
    };
    Some((options, rest))
}

impl Options {
    fn prefix<'a>(&self, body: &'a [u8]) -> &'a [u8] {
        &body[..body.len() * self.cut_sixteenths / 16]
    }
}

/// The prefix to check a peek's consistency on: none for compressed bodies. A corrupt
/// compressed stream (which the upstream refuses anyway) may inflate to less from more
/// bytes, or fail to inflate only once whole, so a prefix of it may answer differently.
fn uncompressed_prefix<'a>(options: &Options, body: &'a [u8]) -> &'a [u8] {
    match options.encoding {
        Encoding::Gzip | Encoding::Deflate => &[],
        Encoding::Identity | Encoding::Unsupported => options.prefix(body),
    }
}

/// A peek must settle on the bytes it read: if a prefix already gives a final answer, the
/// whole body gives the same one (the proxy acts on the first final answer).
fn assert_prefix_consistent<T: PartialEq + std::fmt::Debug>(
    what: &str,
    on_prefix: T,
    on_body: T,
    need_more: &T,
) {
    if on_prefix != *need_more {
        assert_eq!(
            on_prefix, on_body,
            "{what}: a prefix's final answer changed"
        );
    }
}

/// gRPC request peeks (`grpc::peek_model`, `grpc::peek_batch_size`, `sequence::peek_grpc`).
/// Input: [`Options`] byte (`extra`: peek field 2 rather than 1), then the body.
pub fn grpc_peek(data: &[u8]) {
    let Some((options, body)) = options(data) else {
        return;
    };
    let (encoding, complete) = (options.encoding, options.complete);
    let field = if options.extra { 2 } else { 1 };
    // On a malformed message a prefix may answer before the fault shows (a field longer
    // than the message looks truncated): the upstream refuses the message either way.
    let request = whole_request(body, encoding);
    let prefix = match request {
        Some(_) => options.prefix(body),
        None => &[],
    };

    let model = grpc::peek_model(body, field, encoding, complete);
    let model_prefix = grpc::peek_model(prefix, field, encoding, false);
    assert_prefix_consistent("peek_model", model_prefix, model, &Peek::NeedMore);

    let batch = grpc::peek_batch_size(body, encoding, complete);
    let batch_prefix = grpc::peek_batch_size(prefix, encoding, false);
    assert_prefix_consistent("peek_batch_size", batch_prefix, batch, &BatchPeek::NeedMore);
    if let (BatchPeek::Found(size), Some(request)) = (batch, &request) {
        let first = request.inputs.first().and_then(|input| input.shape.first());
        assert_eq!(first.map(|&d| d as u64), Some(size), "batch size vs prost");
    }

    // The model the upstream executes is the one Trident routed on: a body the
    // streaming check lets through names what prost decodes, however it is chunked.
    let names = names_checked(body, field, encoding, body.len());
    assert_eq!(
        names,
        names_checked(body, field, encoding, prefix.len()),
        "ModelCheck depends on chunking"
    );
    if let (Some(names), Some(request), 1) = (&names, &request, field) {
        let decoded = (!request.model_name.is_empty()).then(|| request.model_name.clone());
        assert_eq!(names.as_slice(), [decoded], "ModelCheck vs prost");
    }

    let control = sequence::peek_grpc(body, encoding, complete);
    if complete {
        assert_ne!(
            control,
            SequencePeek::NeedMore,
            "peek_grpc on a complete body"
        );
    }
    let control_prefix = sequence::peek_grpc(prefix, encoding, false);
    assert_prefix_consistent(
        "sequence::peek_grpc",
        control_prefix,
        control,
        &SequencePeek::NeedMore,
    );
}

/// Each message's model name as [`ModelCheck`] reads `body` fed in two chunks split at
/// `cut`; `None` when it refuses the body.
fn names_checked(
    body: &[u8],
    field: u32,
    encoding: Encoding,
    cut: usize,
) -> Option<Vec<Option<String>>> {
    let mut check = ModelCheck::new(field, encoding);
    let mut names = Vec::new();
    let mut record = |name: Option<&str>| -> Result<(), Violation> {
        names.push(name.map(str::to_owned));
        Ok(())
    };
    let (head, tail) = body.split_at(cut.min(body.len()));
    check.feed(head, false, &mut record).ok()?;
    check.feed(tail, true, &mut record).ok()?;
    Some(names)
}

/// The request when `body` is exactly one uncompressed message that prost decodes.
fn whole_request(body: &[u8], encoding: Encoding) -> Option<ModelInferRequest> {
    let (&[0, l0, l1, l2, l3], message) = body.split_first_chunk::<5>()? else {
        return None;
    };
    let whole = u32::from_be_bytes([l0, l1, l2, l3]) as usize == message.len();
    let request = (encoding == Encoding::Identity && whole)
        .then(|| ModelInferRequest::decode(message).ok())??;
    Some(request)
}

/// HTTP/JSON request peeks: the JSON batch-size and sequence scans on a raw document, and
/// both through the binary-tensor header and content-encoding handling of `http_body`.
/// Input: [`Options`] byte (`extra`: the body is a binary-tensor request whose JSON part
/// is the next byte's value in bytes long), then the body.
pub fn http_peek(data: &[u8]) {
    let Some((options, mut body)) = options(data) else {
        return;
    };
    let (encoding, complete) = (options.encoding, options.complete);
    let prefix = options.prefix(body);

    let batch = json_batch::batch_size(body, complete);
    if complete {
        assert_ne!(batch, BatchPeek::NeedMore, "batch_size on a complete body");
    }
    let batch_prefix = json_batch::batch_size(prefix, false);
    assert_prefix_consistent("batch_size", batch_prefix, batch, &BatchPeek::NeedMore);

    let json_len = if options.extra {
        let Some((&len, rest)) = body.split_first() else {
            return;
        };
        body = rest;
        Some(usize::from(len))
    } else {
        None
    };
    let prefix = uncompressed_prefix(&options, body);

    let batch = http_body::peek_batch_size(body, json_len, encoding, complete);
    if complete {
        assert_ne!(
            batch,
            BatchPeek::NeedMore,
            "peek_batch_size on a complete body"
        );
    }
    let batch_prefix = http_body::peek_batch_size(prefix, json_len, encoding, false);
    assert_prefix_consistent("peek_batch_size", batch_prefix, batch, &BatchPeek::NeedMore);

    let control = sequence::peek_http(body, json_len, encoding, complete);
    if complete {
        assert_ne!(
            control,
            SequencePeek::NeedMore,
            "peek_http on a complete body"
        );
    }
    let control_prefix = sequence::peek_http(prefix, json_len, encoding, false);
    assert_prefix_consistent(
        "sequence::peek_http",
        control_prefix,
        control,
        &SequencePeek::NeedMore,
    );
}

/// The versions the rewriter is tried with; the empty one removes the field.
const VERSIONS: [&str; 4] = ["", "1", "22", "a-long-version-name"];

/// `GrpcVersionRewriter`. Input: a byte choosing the version (low 2 bits) and two chunk
/// boundaries (6 bits, in 1/64ths of the body), then the body. The output must not depend
/// on how the body was chunked, rewriting its output again must change nothing, and a body
/// of whole uncompressed `ModelInferRequest`s must come out as the same requests.
pub fn version_rewrite(data: &[u8]) {
    let Some((&byte, body)) = data.split_first() else {
        return;
    };
    let version = VERSIONS[usize::from(byte & 3)];
    let whole = rewrite_chunks(version, body, &[]);
    let first = body.len() * usize::from(byte >> 2 & 7) / 8;
    let second = first + (body.len() - first) * usize::from(byte >> 5) / 8;
    let chunked = rewrite_chunks(version, body, &[first, second]);
    assert_eq!(whole, chunked, "rewriting depends on chunking");
    let Ok(output) = whole else {
        return;
    };
    let again = rewrite_chunks(version, &output, &[]);
    assert_eq!(
        again.as_ref(),
        Ok(&output),
        "rewriting a rewritten body changed it"
    );
    let Some(before) = requests(body) else {
        return;
    };
    let after = requests(&output).expect("a rewritten body must still frame and decode");
    assert_eq!(
        after.len(),
        before.len(),
        "rewriting changed the message count"
    );
    for (before, after) in before.iter().zip(&after) {
        assert_eq!(before.model_name, after.model_name);
        assert_eq!(encoded_inputs(before), encoded_inputs(after));
        assert_eq!(before.raw_input_contents, after.raw_input_contents);
    }
}

/// One input tensor as encoded without its parameters, and its parameters'
/// entries as encoded, sorted by name.
type EncodedInput = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// A request's inputs as encoded, bit for bit, to compare them: a NaN among
/// them is not equal to itself, so `==` on the decoded tensors would report a
/// change that is none. Each tensor's `parameters` map is encoded entry by
/// entry, sorted, since a map encodes in no fixed order.
fn encoded_inputs(request: &ModelInferRequest) -> Vec<EncodedInput> {
    request
        .inputs
        .iter()
        .map(|input| {
            let mut input = input.clone();
            let mut parameters: Vec<(String, Vec<u8>)> = input
                .parameters
                .drain()
                .map(|(name, value)| (name, value.encode_to_vec()))
                .collect();
            parameters.sort();
            (input.encode_to_vec(), parameters)
        })
        .collect()
}

/// Feeds `body` cut at `cuts` (ascending offsets) and joins what comes out.
fn rewrite_chunks(version: &str, body: &[u8], cuts: &[usize]) -> Result<Vec<u8>, String> {
    let mut rewriter = GrpcVersionRewriter::new(version);
    let mut output = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([body.len()]) {
        let chunk = Bytes::copy_from_slice(&body[start..end]);
        let out = rewriter
            .rewrite(chunk, end == body.len())
            .map_err(|e| format!("{e:?}"))?;
        output.extend_from_slice(&out);
        start = end;
    }
    Ok(output)
}

/// The requests of a body of whole uncompressed gRPC messages, if prost decodes them all.
fn requests(mut body: &[u8]) -> Option<Vec<ModelInferRequest>> {
    let mut requests = Vec::new();
    while !body.is_empty() {
        let (&[0, l0, l1, l2, l3], rest) = body.split_first_chunk::<5>()? else {
            return None;
        };
        let (message, rest) =
            rest.split_at_checked(u32::from_be_bytes([l0, l1, l2, l3]) as usize)?;
        requests.push(ModelInferRequest::decode(message).ok()?);
        body = rest;
    }
    Some(requests)
}

const EXACT: Tolerance = Tolerance {
    absolute: 0.0,
    relative: 0.0,
};

/// `infer_response::decode_http`/`decode_grpc` of two upstream answers, then the mirror
/// comparison of what decodes. Input: a byte (bit 0: gRPC, else HTTP; bits 1-2: the
/// encoding; bit 3: gRPC stream / HTTP binary-tensor header; bits 4-7: the status, gRPC
/// code or HTTP 200 + n), a byte giving the binary-tensor JSON length, two bytes (LE) where
/// the primary's body ends, then the bodies.
pub fn infer_response(data: &[u8]) {
    let Some((&[byte, json_len, end_lo, end_hi], bodies)) = data.split_first_chunk::<4>() else {
        return;
    };
    let protocol = if byte & 1 != 0 {
        Protocol::Grpc
    } else {
        Protocol::Http
    };
    let encoding = ["identity", "gzip", "deflate", "br"][usize::from(byte >> 1 & 3)];
    let flag = byte & 8 != 0;
    let status = byte >> 4;
    let end = usize::from(u16::from_le_bytes([end_lo, end_hi])).min(bodies.len());
    let (primary, mirror) = bodies.split_at(end);
    let decode = |body: &[u8]| -> Result<Vec<Answer>, String> {
        match protocol {
            Protocol::Grpc => {
                infer_response::decode_grpc(status, Some(encoding.as_bytes()), body, flag)
            }
            Protocol::Http => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_ENCODING,
                    HeaderValue::from_static(encoding),
                );
                if flag {
                    headers.insert(
                        INFERENCE_HEADER_CONTENT_LENGTH,
                        HeaderValue::from(u16::from(json_len)),
                    );
                }
                infer_response::decode_http(200 + u16::from(status), &headers, body)
                    .map(|answer| vec![answer])
            }
        }
    };
    let Ok(primary) = decode(primary) else {
        return;
    };
    let itself = compare(&primary, &primary, EXACT);
    assert_eq!(
        (itself.max_abs_error, itself.max_rel_error),
        (0.0, 0.0),
        "an answer differs from itself"
    );
    let Ok(mirror) = decode(mirror) else {
        return;
    };
    let forward = compare(&primary, &mirror, EXACT);
    let backward = compare(&mirror, &primary, EXACT);
    assert_eq!(
        forward.mismatch.is_some(),
        backward.mismatch.is_some(),
        "exact comparison is not symmetric: {forward:?} vs {backward:?}"
    );
}

/// `triton_load::parse` and `LoadTracker` on a Triton metrics scrape. Every counter must
/// be a finite non-negative number, and a repeated scrape reports no queue time.
pub fn triton_metrics(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (model, counters) in triton_load::parse(text) {
        for value in [counters.pending, counters.queue_us, counters.requests] {
            assert!(value.is_finite() && value >= 0.0, "{model:?}: {counters:?}");
        }
    }
    let mut tracker = LoadTracker::new();
    tracker.update(text);
    for (model, load) in tracker.update(text) {
        assert_eq!(
            load.queue_ns_per_request, 0,
            "{model:?}: no request finished"
        );
    }
}

/// The shared secret of [`jwt_token`]'s HMAC key.
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The clock [`jwt_token`] verifies at.
const NOW: u64 = 1_700_000_000;

fn jwt_verifier(keys: KeySet) -> Verifier {
    let settings = ValidationSettings {
        algorithms: Vec::new(),
        issuers: vec!["https://issuer.test".to_owned()],
        audiences: vec!["triton".to_owned()],
        leeway_secs: 30,
        required_claims: vec!["sub".to_owned()],
        cache_capacity: 4,
    };
    Verifier::new(settings, keys)
}

/// `Verifier::verify` with an HMAC key. Input: a byte (bit 0: the rest is the token as
/// sent; else the rest is a JOSE header and a claims set separated by the first newline,
/// signed here with the key, bits 1-2 choosing HS256/384/512) then the rest. A token's
/// verdict must not change when it comes from the cache.
pub fn jwt_token(data: &[u8]) {
    let Some((&byte, rest)) = data.split_first() else {
        return;
    };
    let token = if byte & 1 != 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        token.to_owned()
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &b""[..]),
        };
        let alg = [
            Algorithm::HS256,
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::HS256,
        ][usize::from(byte >> 1 & 3)];
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, alg)
            .expect("HMAC signing cannot fail");
        format!("{signed}.{signature}")
    };
    let verifier = jwt_verifier(KeySet::hmac(SECRET));
    let first = verifier.verify(&token, NOW);
    let again = verifier.verify(&token, NOW);
    assert_eq!(first, again, "a cached verdict differs");
    if let Ok(claims) = first {
        assert!(claims.exp().is_none_or(|exp| NOW <= exp.saturating_add(30)));
        claims.as_header_value("sub");
        claims.allows("scope", "infer");
    }
}

/// A well-formed RS256 token (unsigned by any fixture key) for [`jwks`] to check.
pub const RS256_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

/// `KeySet::from_jwks` (a JWKS document fetched from the IdP) and `jwks::parse_ca_pem` on
/// the same bytes; a key set that parses must verify (here: refuse) a token without panicking.
pub fn jwks(data: &[u8]) {
    let _ = filters::jwt::jwks::parse_ca_pem(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = KeySet::from_jwks(text) {
        assert!(!keys.is_empty(), "a parsed key set has a key");
        let verifier = jwt_verifier(keys);
        assert!(verifier.verify(RS256_TOKEN, NOW).is_err());
    }
}

/// `config::parse` of a config file. Inputs naming files (`*_file` keys) or host names
/// (which `parse` resolves through DNS) are skipped: the fuzzer must not read the machine's
/// files or query its resolver. Errors must come with a message.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        // Invalid TOML is still fed to `parse`, which reports it.
        return assert!(trident::config::parse(text, Path::new("/nonexistent")).is_err());
    };
    if table.iter().any(|(key, value)| reaches_outside(key, value)) {
        return;
    }
    if let Err(errors) = trident::config::parse(text, Path::new("/nonexistent")) {
        assert!(!errors.0.is_empty(), "a failed parse reports an error");
        assert!(errors.0.iter().all(|e| !e.message.is_empty()));
        let _ = errors.to_string();
    }
}

/// Whether a config value names a file or a host name to resolve.
fn reaches_outside(key: &str, value: &toml::Value) -> bool {
    if key.ends_with("_file") {
        return true;
    }
    match value {
        toml::Value::String(text) => {
            text.parse::<std::net::SocketAddr>().is_err()
                && text
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        }
        toml::Value::Array(items) => items.iter().any(|item| reaches_outside("", item)),
        toml::Value::Table(table) => table.iter().any(|(k, v)| reaches_outside(k, v)),
        _ => false,
    }
}
