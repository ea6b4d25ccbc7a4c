//! Request size limits and header rules: `[server]` defaults, route keys, `[routes.headers]`.

use http::{HeaderName, HeaderValue};

use super::file::{HeadersFile, RouteFile, ServerFile};
use super::{at_least_one, BodyLimits, Errors, HeaderRules};

/// Default `server.max_request_header_bytes`: h2's header list limit in Pingora.
pub(super) const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 64 << 10;
/// Pingora refuses an HTTP/1 request header past this on its own.
const PINGORA_MAX_HEADER_BYTES: usize = 1_048_575;
/// Default body and gRPC message limit: four times the largest request the conformance
/// suite sends (64 MiB tensors), well past real inference inputs.
pub(super) const DEFAULT_MAX_REQUEST_BYTES: u64 = 256 << 20;

/// Headers a rule may not touch: hop-by-hop and framing headers the proxy manages
/// itself, and gRPC's own.
fn is_protected(name: &HeaderName) -> bool {
    const PROTECTED: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "content-length",
        "host",
        "content-type",
    ];
    PROTECTED.contains(&name.as_str()) || name.as_str().starts_with("grpc-")
}

/// `server.max_request_header_bytes`.
pub fn max_request_header_bytes(file: &ServerFile, errors: &mut Errors) -> usize {
    match file.max_request_header_bytes {
        n if (1..=PINGORA_MAX_HEADER_BYTES).contains(&n) => n,
        _ => {
            errors.push(
                "server.max_request_header_bytes",
                format!("must be between 1 and {PINGORA_MAX_HEADER_BYTES}"),
            );
            DEFAULT_MAX_REQUEST_HEADER_BYTES
        }
    }
}

/// The routes' default limits, from `[server]`.
pub fn server_limits(file: &ServerFile, errors: &mut Errors) -> BodyLimits {
    BodyLimits {
        max_request_bytes: at_least_one("server.max_request_bytes", file.max_request_bytes, errors),
        max_grpc_message_bytes: at_least_one(
            "server.max_grpc_message_bytes",
            file.max_grpc_message_bytes,
            errors,
        ),
    }
}

/// A route's limits: its own keys, else the server's.
pub fn route_limits(
    path: &str,
    route: &RouteFile,
    server: BodyLimits,
    errors: &mut Errors,
) -> BodyLimits {
    BodyLimits {
        max_request_bytes: route
            .max_request_bytes
            .map_or(server.max_request_bytes, |v| {
                at_least_one(&format!("{path}.max_request_bytes"), v, errors)
            }),
        max_grpc_message_bytes: route
            .max_grpc_message_bytes
            .map_or(server.max_grpc_message_bytes, |v| {
                at_least_one(&format!("{path}.max_grpc_message_bytes"), v, errors)
            }),
    }
}

/// `server.served_by_header`.
pub fn served_by_header(file: &ServerFile, errors: &mut Errors) -> Option<HeaderName> {
    let name = file.served_by_header.as_deref()?;
    checked_name("server.served_by_header", name, errors)
}

/// A header name a rule may set or remove.
fn checked_name(path: &str, name: &str, errors: &mut Errors) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) if is_protected(&name) => {
            errors.push(
                path,
                format!(
                    "{name:?} is managed by the proxy or the protocol (hop-by-hop, framing, \
                     host, content-type or grpc-*) and cannot be set or removed"
                ),
            );
            None
        }
        Ok(name) => Some(name),
        Err(_) => {
            errors.push(path, format!("invalid header name {name:?}"));
            None
        }
    }
}

/// `[routes.headers]` of the route at `path`.
pub fn header_rules(path: &str, file: Option<&HeadersFile>, errors: &mut Errors) -> HeaderRules {
    let Some(file) = file else {
        return HeaderRules::default();
    };
    let path = format!("{path}.headers");
    let set =
        |key: &str, pairs: &std::collections::BTreeMap<String, String>, errors: &mut Errors| {
            pairs
                .iter()
                .filter_map(|(name, value)| {
                    let at = format!("{path}.{key}.{name}");
                    let name = checked_name(&at, name, errors)?;
                    match HeaderValue::from_str(value) {
                        Ok(value) => Some((name, value)),
                        Err(_) => {
                            errors.push(&at, format!("invalid header value {value:?}"));
                            None
                        }
                    }
                })
                .collect()
        };
    let remove = |key: &str, names: &[String], errors: &mut Errors| {
        names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| checked_name(&format!("{path}.{key}[{i}]"), name, errors))
            .collect()
    };
    HeaderRules {
        request_set: set("request_set", &file.request_set, errors),
        request_remove: remove("request_remove", &file.request_remove, errors),
        response_set: set("response_set", &file.response_set, errors),
        response_remove: remove("response_remove", &file.response_remove, errors),
    }
}
