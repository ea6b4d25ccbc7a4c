fn main() {
    build_mock_grpc();
}

/// Generates the tonic server and client for Triton's `inference.GRPCInferenceService`
/// (KServe v2) without protoc: the messages are hand-written prost structs in
/// `src/protocol/kserve.rs`, which `include!`s the generated file.
fn build_mock_grpc() {
    use tonic_build::manual::{Builder, Method, Service};

    const ROUTES: [&str; 10] = [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    ];
    // The service name doubles as the route prefix, so it keeps Triton's exact spelling;
    // `protocol::kserve` re-exports the resulting types under conventional names.
    let mut service = Service::builder()
        .name("GRPCInferenceService")
        .package("inference");
    for route in ROUTES {
        let mut name = String::new();
        for c in route.chars() {
            if c.is_ascii_uppercase() && !name.is_empty() {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        }
        let streaming = route == "ModelStreamInfer";
        let input = if streaming { "ModelInfer" } else { route };
        // The generated code is included one module below `protocol::kserve`.
        let mut method = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("super::super::{input}Request"))
            .output_type(format!("super::super::{route}Response"))
            .codec_path("tonic_prost::ProstCodec");
        if streaming {
            method = method.client_streaming().server_streaming();
        }
        service = service.method(method.build());
    }
    Builder::new().compile(&[service.build()]);
    println!("cargo:rerun-if-changed=build.rs");
}
