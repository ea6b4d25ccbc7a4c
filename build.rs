fn main() {
    build_mock_grpc();
    commit_for_build_info();
}

/// `TRIDENT_COMMIT` for `trident_build_info`: the variable when set (image builds
/// without `.git`), else the checkout's commit, else `unknown`. The script reruns
/// when HEAD moves (its file, and the branch file it names), not on every build.
fn commit_for_build_info() {
    println!("cargo:rerun-if-env-changed=TRIDENT_COMMIT");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let commit = std::env::var("TRIDENT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TRIDENT_COMMIT={commit}");
    // In a worktree HEAD is under its own git dir; branch refs under the common one.
    let head = git(&["rev-parse", "--git-path", "HEAD"]);
    let branch =
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r]));
    let packed = git(&["rev-parse", "--git-path", "packed-refs"]);
    // A missing file would make Cargo rerun the script every build.
    for path in [head, branch, packed].into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// Generates the tonic server and client for Triton's `inference.GRPCInferenceService`
/// (KServe v2) without protoc: the messages are hand-written prost structs in
/// `src/protocol/kserve.rs`, which `include!`s the generated file.
fn build_mock_grpc() {
    use tonic_build::manual::{Builder, Method, Service};

    const ROUTES: [&str; 12] = [
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
        "RepositoryModelLoad",
        "RepositoryModelUnload",
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
