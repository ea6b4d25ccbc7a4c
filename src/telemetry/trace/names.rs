//! Span names, low in cardinality as the semantic conventions ask: the HTTP
//! method and the path's template (`POST /v2/models/{model}/infer`), the
//! gRPC method (`inference.GRPCInferenceService/ModelInfer`). A path Triton
//! does not serve is named by its method alone, so a scan cannot flood the
//! tracing backend with names.

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

/// Writes `METHOD /template` for an HTTP request, or `METHOD` for a path
/// Triton does not serve, into `name` (emptied first: a request's recording
/// keeps its name's buffer for the next request).
pub fn http_span_name(name: &mut String, method: &str, path: &str) {
    name.clear();
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
                return;
            }
        };
        name.push('/');
        name.push_str(part);
        previous = segment;
    }
    if !name[method.len() + 1..].starts_with("/v2") {
        name.truncate(method.len());
    }
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

/// Writes the span name of a gRPC call, `service/method` (or `grpc` for an
/// unknown one), into `name` (emptied first).
pub fn grpc_span_name(name: &mut String, path: &str) {
    name.clear();
    match grpc_method(path) {
        Some((service, method)) => {
            name.push_str(service);
            name.push('/');
            name.push_str(method);
        }
        None => name.push_str("grpc"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(method: &str, path: &str) -> String {
        // A buffer that held a longer name: it is emptied first.
        let mut name = "x".repeat(80);
        http_span_name(&mut name, method, path);
        name
    }

    fn grpc(path: &str) -> String {
        let mut name = "x".repeat(80);
        grpc_span_name(&mut name, path);
        name
    }

    #[test]
    fn http_names_use_the_path_template() {
        assert_eq!(
            http("POST", "/v2/models/resnet/infer"),
            "POST /v2/models/{model}/infer"
        );
        assert_eq!(
            http("POST", "/v2/models/resnet/versions/3/infer"),
            "POST /v2/models/{model}/versions/{version}/infer"
        );
        assert_eq!(http("GET", "/v2/health/ready"), "GET /v2/health/ready");
        assert_eq!(http("GET", "/v2"), "GET /v2");
    }

    #[test]
    fn unknown_paths_are_named_by_method_alone() {
        assert_eq!(http("GET", "/wp-admin/x.php"), "GET");
        assert_eq!(http("GET", "/v2/models/m/123456"), "GET");
        assert_eq!(http("GET", "/"), "GET");
    }

    #[test]
    fn grpc_names_are_the_method() {
        let path = "/inference.GRPCInferenceService/ModelInfer";
        assert_eq!(grpc(path), "inference.GRPCInferenceService/ModelInfer");
        assert_eq!(grpc_method(path), Some((GRPC_SERVICE, "ModelInfer")));
        assert_eq!(grpc("/other.Service/X"), "grpc");
        assert_eq!(grpc("/inference.GRPCInferenceService/a/b"), "grpc");
    }
}
