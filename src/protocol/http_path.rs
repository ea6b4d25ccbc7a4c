//! Where a KServe-v2 / Triton HTTP request path names a model, and which paths
//! are refused because an upstream might read another model in them.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Why Trident refuses to route `path` (its query aside), if it does.
///
/// Trident routes on the path as sent; Triton, or anything between it and
/// Trident, might normalise it first. A path that normalises to another one
/// could then reach a model Trident neither routed nor authorised for
/// (`/v2/models/open/../guarded/infer`), so such paths are refused rather than
/// normalised, since no client needs to send them:
/// - dot segments (`.`, `..`) and empty segments (`//`; a trailing `/` is fine),
/// - backslashes, which some servers treat as `/`,
/// - percent-encoded unreserved characters (`%6Dodels`, `%2e`), which RFC 3986
///   makes equal to the plain ones, and an encoded `/` or `\`, which splits
///   segments differently for an upstream that decodes before it splits,
/// - control characters, encoded or not (a C string ends at `%00`).
///
/// Other percent-encodings (a space as `%20`) are kept; `model_from_path` decodes them.
pub fn ambiguity(path: &str) -> Option<&'static str> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Some("empty path segment");
        }
        if segment.contains('\\') {
            return Some("backslash in path");
        }
        // A decoded segment is a dot segment when it is one or two dots.
        let (mut decoded_len, mut all_dots) = (0usize, true);
        let mut bytes = segment.as_bytes();
        while let Some((&byte, rest)) = bytes.split_first() {
            let escaped = match rest {
                [hi, lo, ..] if byte == b'%' => hex(*hi).zip(hex(*lo)).map(|(h, l)| h << 4 | l),
                _ => None,
            };
            let plain = escaped.unwrap_or(byte);
            if escaped.is_some() {
                if plain.is_ascii_alphanumeric() || b"-._~".contains(&plain) {
                    return Some("percent-encoded unreserved character in path");
                }
                if plain == b'/' || plain == b'\\' {
                    return Some("percent-encoded '/' or '\\' in path");
                }
                bytes = &rest[2..];
            } else {
                bytes = rest;
            }
            if plain.is_ascii_control() {
                return Some("control character in path");
            }
            decoded_len += 1;
            all_dots &= plain == b'.';
        }
        if all_dots && (1..=2).contains(&decoded_len) {
            return Some("dot segment in path");
        }
    }
    None
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The model a request path addresses, if any.
///
/// Model-scoped calls are `/v2/models/{model}[/versions/{v}]...` and
/// `/v2/repository/models/{model}/(load|unload)`; everything else (health,
/// server metadata, `/v2/models/stats` for all models, repository index,
/// logging, shared memory) is server-level and returns `None`.
///
/// Triton percent-decodes the segment, so we do too: a client that encodes
/// `a/b` as `a%2Fb` is routed by the name Triton will see.
pub fn model_from_path(path: &str) -> Option<Cow<'_, str>> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path.strip_prefix("/v2/")?;
    let segment = if let Some(after) = rest.strip_prefix("models/") {
        let (model, tail) = after.split_once('/').unwrap_or((after, ""));
        // `/v2/models/stats` is the all-models statistics call, not a model called "stats".
        if model == "stats" && tail.is_empty() {
            return None;
        }
        model
    } else {
        let after = rest.strip_prefix("repository/models/")?;
        after.split_once('/').map_or(after, |(model, _)| model)
    };
    if segment.is_empty() {
        return None;
    }
    // A name that is not valid UTF-8 after decoding is kept raw: Triton will reject it, not us.
    Some(
        percent_decode_str(segment)
            .decode_utf8()
            .unwrap_or(Cow::Borrowed(segment)),
    )
}

#[cfg(test)]
mod tests {
    use super::{ambiguity, model_from_path};

    #[test]
    fn paths_an_upstream_could_read_differently_are_refused() {
        for path in [
            "/v2/models/a/../b/infer",
            "/v2/models/a/./infer",
            "/v2/models/a/%2e%2E/b/infer",
            "/v2/models/a/.%2e/b/infer",
            "/v2/health/../models/b/infer",
            "/../v2/models/b/infer",
            "/v2/models/..",
            "//v2/models/b/infer",
            "/v2/models//b/infer",
            "/v2/models/a\\..\\b/infer",
            "/v2/%6Dodels/b/infer",
            "/v2/models/re%73net/infer",
            "/v2/models/a%2Fb/infer",
            "/v2/models/a%5cb/infer",
            "/v2/models/b%00/infer",
            "/v2/models/b%0a/infer",
            "/v2/models/b\t/infer",
        ] {
            assert!(ambiguity(path).is_some(), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/v2/models/resnet50/infer",
            "/v2/models/resnet50/versions/3/infer?x=../y",
            "/v2/models/my.model/ready",
            "/v2/models/my..model/ready",
            "/v2/models/with%20space/infer",
            "/v2/models/caf%C3%A9/infer",
            "/v2/models/100%/infer",
            "/v2/health/ready",
            "/v2/",
            "/v2",
            "/",
            "",
        ] {
            assert_eq!(ambiguity(path), None, "{path}");
        }
    }

    fn model(path: &str) -> Option<String> {
        model_from_path(path).map(|m| m.into_owned())
    }

    #[test]
    fn model_scoped_paths() {
        assert_eq!(
            model("/v2/models/resnet50/infer").as_deref(),
            Some("resnet50")
        );
        assert_eq!(model("/v2/models/resnet50").as_deref(), Some("resnet50"));
        assert_eq!(
            model("/v2/models/resnet50/versions/3/infer").as_deref(),
            Some("resnet50")
        );
        assert_eq!(
            model("/v2/models/resnet50/ready?x=1").as_deref(),
            Some("resnet50")
        );
        assert_eq!(
            model("/v2/models/resnet50/stats").as_deref(),
            Some("resnet50")
        );
        assert_eq!(
            model("/v2/repository/models/bert/load").as_deref(),
            Some("bert")
        );
        assert_eq!(model("/v2/models/a%2Fb/infer").as_deref(), Some("a/b"));
    }

    #[test]
    fn server_level_paths() {
        for path in [
            "/v2",
            "/v2/",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/stats",
            "/v2/models/",
            "/v2/repository/index",
            "/v2/systemsharedmemory/status",
            "/metrics",
            "/",
            "",
        ] {
            assert_eq!(model(path), None, "{path}");
        }
    }

    #[test]
    fn invalid_utf8_is_kept_raw() {
        assert_eq!(model("/v2/models/%FF/infer").as_deref(), Some("%FF"));
    }
}
