//! Triton protocol knowledge: which model a request addresses, and how an
//! error must look for the client to read it like Triton's own.

pub mod api;
pub mod grpc;
pub mod http_body;
pub mod http_path;
pub mod infer_response;
pub mod json_batch;
mod json_scan;
pub mod kserve;
pub mod model_check;
pub mod reply;
pub mod sequence;
#[cfg(test)]
mod testing;
pub mod version_rewrite;

/// The protocol a listener speaks, which fixes the upstream port and the error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// KServe-v2 HTTP/REST (`tritonclient.http`), over HTTP/1.1 or h2c.
    Http,
    /// `inference.GRPCInferenceService` over h2c (`tritonclient.grpc`).
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Why a model name cannot be routed on, if it cannot: Triton hands names to
/// C APIs, which would read `"resnet50\0x"` as `resnet50` while Trident routes
/// it as another model, so control characters are refused.
pub fn name_problem(name: &str) -> Option<&'static str> {
    name.chars()
        .any(char::is_control)
        .then_some("the model name contains a control character")
}
