//! What the start of a KServe-v2 HTTP infer body says about the request.

use super::grpc::{inflate_prefix, Encoding, Inflated};
use super::json_batch::{batch_size, BatchPeek};

/// The JSON part's length of a binary-tensor request; the raw tensors follow it.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Whether `path` is a `/v2/models/{m}[/versions/{v}]/infer` call.
pub fn is_infer_path(path: &str) -> bool {
    path.starts_with("/v2/models/")
        && path
            .split_once('?')
            .map_or(path, |(p, _)| p)
            .ends_with("/infer")
}

/// Whether `path` is Triton's streaming generate call (server-sent events).
pub fn is_streaming_path(path: &str) -> bool {
    path.starts_with("/v2/models/") && path.ends_with("/generate_stream")
}

/// The batch size of an infer request from the start of its body.
///
/// `json_len` is the `Inference-Header-Content-Length` of binary-tensor
/// requests; `encoding` the body's `Content-Encoding`, which that length is
/// measured after undoing.
pub fn peek_batch_size(
    body: &[u8],
    json_len: Option<usize>,
    encoding: Encoding,
    body_complete: bool,
) -> BatchPeek {
    peek_json(
        body,
        json_len,
        encoding,
        body_complete,
        BatchPeek::Absent,
        batch_size,
    )
}

/// Runs `query` (a JSON document prefix, whether it is the whole document) on the JSON
/// part of an infer body's start, with the arguments of [`peek_batch_size`]; `absent` is
/// the verdict for a body that cannot be read.
pub(super) fn peek_json<T>(
    body: &[u8],
    json_len: Option<usize>,
    encoding: Encoding,
    body_complete: bool,
    absent: T,
    query: impl FnOnce(&[u8], bool) -> T,
) -> T {
    let (body, complete) = match encoding {
        Encoding::Identity => (std::borrow::Cow::Borrowed(body), body_complete),
        Encoding::Unsupported => return absent,
        Encoding::Gzip | Encoding::Deflate => match inflate_prefix(body, encoding) {
            // A capped body is read no further, so it is as complete as the body.
            (inflated, Inflated::Whole | Inflated::Capped) => {
                (std::borrow::Cow::Owned(inflated), body_complete)
            }
            (_, Inflated::Stopped) if body_complete => return absent,
            (inflated, Inflated::Stopped) => (std::borrow::Cow::Owned(inflated), false),
        },
    };
    match json_len {
        Some(len) if body.len() >= len => query(&body[..len], true),
        _ => query(&body, complete),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{write::GzEncoder, Compression};

    use super::*;

    const JSON: &[u8] =
        br#"{"inputs":[{"name":"INPUT0","shape":[4,16],"datatype":"INT32","parameters":{"binary_data_size":256}}]}"#;

    #[test]
    fn infer_paths() {
        assert!(is_infer_path("/v2/models/m/infer"));
        assert!(is_infer_path("/v2/models/m/versions/2/infer?x=1"));
        assert!(!is_infer_path("/v2/models/m/ready"));
        assert!(!is_infer_path("/v2/health/infer-ish"));
    }

    #[test]
    fn binary_requests_scan_only_the_json_part() {
        let mut body = JSON.to_vec();
        body.extend_from_slice(&[0xff; 256]);
        assert_eq!(
            peek_batch_size(&body, Some(JSON.len()), Encoding::Identity, false),
            BatchPeek::Found(4)
        );
        assert_eq!(
            peek_batch_size(&body[..20], Some(JSON.len()), Encoding::Identity, false),
            BatchPeek::NeedMore
        );
        // A header length that cuts the JSON short: not a valid request, no batch size.
        assert_eq!(
            peek_batch_size(&body, Some(30), Encoding::Identity, false),
            BatchPeek::Absent
        );
    }

    #[test]
    fn a_compressed_bomb_is_read_only_within_the_inflation_bound() {
        let mut bomb = JSON.to_vec();
        bomb.resize(8 << 20, b' ');
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&bomb).unwrap();
        let compressed = gz.finish().unwrap();
        assert_eq!(
            peek_batch_size(&compressed, None, Encoding::Gzip, true),
            BatchPeek::Found(4)
        );
        bomb.splice(..JSON.len(), *b"{}");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&bomb).unwrap();
        let compressed = gz.finish().unwrap();
        assert_eq!(
            peek_batch_size(&compressed, None, Encoding::Gzip, true),
            BatchPeek::Absent
        );
    }

    #[test]
    fn compressed_bodies_are_inflated_as_far_as_they_go() {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(JSON).unwrap();
        let compressed = gz.finish().unwrap();
        assert_eq!(
            peek_batch_size(&compressed, None, Encoding::Gzip, true),
            BatchPeek::Found(4)
        );
        for cut in 0..compressed.len() {
            let peek = peek_batch_size(&compressed[..cut], None, Encoding::Gzip, false);
            assert!(
                matches!(peek, BatchPeek::NeedMore | BatchPeek::Found(4)),
                "cut {cut}: {peek:?}"
            );
        }
        assert_eq!(
            peek_batch_size(b"not gzip", None, Encoding::Gzip, true),
            BatchPeek::Absent
        );
    }
}
