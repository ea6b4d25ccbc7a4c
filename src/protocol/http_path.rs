//! Where a KServe-v2 / Triton HTTP request path names a model.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

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
    use super::model_from_path;

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
