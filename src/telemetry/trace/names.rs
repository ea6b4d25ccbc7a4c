//! Span names, low in cardinality as the semantic conventions ask: the HTTP
//! method and the path's template (`POST /v2/models/{model}/infer`), the
//! gRPC method (`inference.GRPCInferenceService/ModelInfer`). A path Triton
//! does not serve is named by its method alone, so a scan cannot flood the
//! tracing backend with names.

use std::borrow::Cow;

/// Whether a path segment is one of Triton's HTTP API's words, kept as it is
/// in a span name (a `match`: this runs for every segment of every sampled request).
fn is_triton_word(segment: &str) -> bool {
    matches!(
        segment,
        "v2" | "health"
            | "live"
            | "ready"
            | "models"
            | "versions"
            | "infer"
            | "config"
            | "stats"
            | "generate"
            | "generate_stream"
            | "trace"
            | "setting"
            | "logging"
            | "repository"
            | "index"
            | "load"
            | "unload"
            | "systemsharedmemory"
            | "cudasharedmemory"
            | "region"
            | "status"
            | "register"
            | "unregister"
    )
}

/// The service whose methods name gRPC spans.
const GRPC_SERVICE: &str = "inference.GRPCInferenceService";
/// A longer method name is not one of Triton's.
const MAX_GRPC_METHOD: usize = 64;

/// `METHOD /template` for an HTTP request, or `METHOD` for a path Triton does not serve.
pub fn http_span_name(method: &str, path: &str) -> String {
    let mut name = String::with_capacity(method.len() + path.len() + 16);
    name.push_str(method);
    // The template is written straight after the method, and cut off again if
    // the path turns out not to be Triton's.
    name.push(' ');
    let mut previous = "";
    for segment in path.split('/').skip(1) {
        // A name's segment is a placeholder after a word that names one, else the word.
        let part = match previous {
            "models" => "{model}",
            "versions" => "{version}",
            "region" => "{region}",
            _ if is_triton_word(segment) => segment,
            _ => {
                name.truncate(method.len());
                return name;
            }
        };
        name.push('/');
        name.push_str(part);
        previous = segment;
    }
    if !name[method.len() + 1..].starts_with("/v2") {
        name.truncate(method.len());
    }
    name
}

/// The gRPC method of a call's path (`/inference.GRPCInferenceService/ModelInfer`),
/// as `(service, method)`; `None` for another service or an odd name.
pub fn grpc_method(path: &str) -> Option<(&'static str, &str)> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(GRPC_SERVICE)?
        .strip_prefix('/')?;
    let plain = !method.is_empty()
        && method.len() <= MAX_GRPC_METHOD
        && method.bytes().all(|b| b.is_ascii_alphanumeric());
    plain.then_some((GRPC_SERVICE, method))
}

/// The span name of a gRPC call: `service/method`, or `grpc` for an unknown one.
pub fn grpc_span_name(path: &str) -> Cow<'static, str> {
    match grpc_method(path) {
        Some((service, method)) => Cow::Owned(format!("{service}/{method}")),
        None => Cow::Borrowed("grpc"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_names_use_the_path_template() {
        assert_eq!(
            http_span_name("POST", "/v2/models/resnet/infer"),
            "POST /v2/models/{model}/infer"
        );
        assert_eq!(
            http_span_name("POST", "/v2/models/resnet/versions/3/infer"),
            "POST /v2/models/{model}/versions/{version}/infer"
        );
        assert_eq!(
            http_span_name("GET", "/v2/health/ready"),
            "GET /v2/health/ready"
        );
        assert_eq!(http_span_name("GET", "/v2"), "GET /v2");
    }

    #[test]
    fn unknown_paths_are_named_by_method_alone() {
        assert_eq!(http_span_name("GET", "/wp-admin/x.php"), "GET");
        assert_eq!(http_span_name("GET", "/v2/models/m/123456"), "GET");
        assert_eq!(http_span_name("GET", "/"), "GET");
    }

    #[test]
    fn grpc_names_are_the_method() {
        let path = "/inference.GRPCInferenceService/ModelInfer";
        assert_eq!(
            grpc_span_name(path),
            "inference.GRPCInferenceService/ModelInfer"
        );
        assert_eq!(grpc_method(path), Some((GRPC_SERVICE, "ModelInfer")));
        assert_eq!(grpc_span_name("/other.Service/X"), "grpc");
        assert_eq!(
            grpc_span_name("/inference.GRPCInferenceService/a/b"),
            "grpc"
        );
    }
}
