//! Replays every committed fuzz corpus (`fuzz/corpus/TARGET/*`) through the checks its
//! `cargo fuzz` target runs, so the inputs that once found a bug, and the coverage the
//! fuzzers built up, are tested on stable by plain `cargo test`.
//!
//! `cargo test --test fuzz_corpora -- --ignored write_seed_corpora` writes the seed inputs
//! (small valid messages of each format) into the corpora; `scripts/fuzz.sh` grows and
//! minimises them.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use prost::Message;
use trident::protocol::kserve::infer_parameter::ParameterChoice;
use trident::protocol::kserve::model_infer_request::InferInputTensor;
use trident::protocol::kserve::model_infer_response::InferOutputTensor;
use trident::protocol::kserve::{
    InferParameter, ModelInferRequest, ModelInferResponse, ModelStreamInferResponse,
};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_input_passes_its_check() {
    for (target, check) in checks::TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect::<Vec<_>>();
        assert!(!entries.is_empty(), "{target}: empty corpus");
        for path in entries {
            let input = std::fs::read(&path).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| check(&input));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        }
    }
}

/// Options byte of `grpc_peek` / `http_peek`: `encoding` 0-3 (identity, gzip, deflate,
/// unsupported), the complete flag, the extra flag and a cut in 1/16ths.
fn options(encoding: u8, complete: bool, extra: bool, cut: u8) -> u8 {
    encoding | u8::from(complete) << 2 | u8::from(extra) << 3 | cut << 4
}

fn frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    let mut framed = vec![u8::from(compressed)];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn parameter(choice: ParameterChoice) -> InferParameter {
    InferParameter {
        parameter_choice: Some(choice),
    }
}

fn infer_request(model: &str, version: &str, sequence: Option<ParameterChoice>) -> Vec<u8> {
    let mut parameters = HashMap::new();
    if let Some(id) = sequence {
        parameters.insert("sequence_id".to_owned(), parameter(id));
        parameters.insert("sequence_start".to_owned(), InferParameter::bool(true));
        parameters.insert("sequence_end".to_owned(), InferParameter::bool(false));
    }
    ModelInferRequest {
        model_name: model.to_owned(),
        model_version: version.to_owned(),
        id: "7".to_owned(),
        parameters,
        inputs: vec![InferInputTensor {
            name: "INPUT0".to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![4, 2],
            ..Default::default()
        }],
        outputs: Vec::new(),
        raw_input_contents: vec![vec![0u8; 32].into()],
    }
    .encode_to_vec()
}

fn fp32_output(name: &str) -> InferOutputTensor {
    InferOutputTensor {
        name: name.to_owned(),
        datatype: "FP32".to_owned(),
        shape: vec![2],
        ..Default::default()
    }
}

fn infer_response() -> ModelInferResponse {
    let raw: Vec<u8> = [0.5f32, -1.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    ModelInferResponse {
        model_name: "m".to_owned(),
        model_version: "1".to_owned(),
        outputs: vec![fp32_output("OUTPUT0")],
        raw_output_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// An `infer_response` input: the options byte, the JSON length, and two bodies.
fn response_pair(options: u8, json_len: u8, primary: &[u8], mirror: &[u8]) -> Vec<u8> {
    let mut input = vec![options, json_len];
    input.extend_from_slice(&(primary.len() as u16).to_le_bytes());
    input.extend_from_slice(primary);
    input.extend_from_slice(mirror);
    input
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let with = |option: u8, body: &[u8]| [&[option][..], body].concat();

    let plain = infer_request("simple", "1", None);
    let sequence_int = infer_request("seq", "", Some(ParameterChoice::Int64Param(42)));
    let sequence_text = infer_request(
        "seq",
        "",
        Some(ParameterChoice::StringParam("corr-1".into())),
    );
    for message in [&plain, &sequence_int, &sequence_text] {
        let framed = frame(false, message);
        seeds.push(("grpc_peek", with(options(0, true, false, 8), &framed)));
        seeds.push(("version_rewrite", with(0b1010_1101, &framed)));
        let stream = [framed.clone(), framed].concat();
        seeds.push(("version_rewrite", with(0b0110_0010, &stream)));
    }
    seeds.push((
        "grpc_peek",
        with(
            options(1, true, false, 5),
            &frame(true, &gzip(&sequence_int)),
        ),
    ));
    seeds.push((
        "grpc_peek",
        with(options(2, false, true, 3), &frame(true, &zlib(&plain))),
    ));

    let json = br#"{"id":"1","parameters":{"sequence_id":7,"sequence_start":true},"inputs":[{"name":"INPUT0","shape":[4,2],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}],"outputs":[{"name":"OUTPUT0"}]}"#;
    let binary = br#"{"inputs":[{"name":"INPUT0","shape":[3],"datatype":"INT32","parameters":{"binary_data_size":12}}],"parameters":{"sequence_id":"s-1","sequence_end":true}}"#;
    seeds.push(("http_peek", with(options(0, true, false, 8), json)));
    seeds.push(("http_peek", with(options(1, true, false, 12), &gzip(json))));
    let mut binary_body = vec![binary.len() as u8];
    binary_body.extend_from_slice(binary);
    binary_body.extend_from_slice(&[1u8; 12]);
    seeds.push(("http_peek", with(options(0, false, true, 4), &binary_body)));

    let http_answer = br#"{"model_name":"m","model_version":"1","outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[2],"data":[0.5,-1.25]}]}"#;
    let binary_answer = br#"{"model_name":"m","outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}"#;
    let mut binary_answer_body = binary_answer.to_vec();
    binary_answer_body.extend([0.5f32, -1.25].iter().flat_map(|v| v.to_le_bytes()));
    seeds.push((
        "infer_response",
        response_pair(0, 0, http_answer, http_answer),
    ));
    seeds.push((
        "infer_response",
        response_pair(
            8,
            binary_answer.len() as u8,
            &binary_answer_body,
            http_answer,
        ),
    ));
    let grpc_answer = frame(false, &infer_response().encode_to_vec());
    let stream_answer = frame(
        false,
        &ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(infer_response()),
        }
        .encode_to_vec(),
    );
    seeds.push((
        "infer_response",
        response_pair(1, 0, &grpc_answer, &grpc_answer),
    ));
    seeds.push((
        "infer_response",
        response_pair(
            1 | 2 << 1,
            0,
            &frame(true, &zlib(&infer_response().encode_to_vec())),
            &grpc_answer,
        ),
    ));
    seeds.push((
        "infer_response",
        response_pair(1 | 8, 0, &stream_answer, &stream_answer),
    ));

    seeds.push((
        "triton_metrics",
        br#"# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="densenet_onnx",version="1"} 1000
nv_inference_request_failure{model="densenet_onnx",reason="REJECTED",version="1"} 2
nv_inference_pending_request_count{model="a\"b\\c\nd",version="1"} 3
nv_inference_queue_duration_us{model="densenet_onnx",version="1"} 123456
nv_gpu_utilization{gpu_uuid="GPU-6d5e3a1c"} 0.42
"#
        .to_vec(),
    ));

    let claims = br#"{"sub":"alice","iss":"https://issuer.test","aud":["triton","other"],"exp":1700000600,"nbf":1699999000,"scope":"infer admin"}"#;
    for (alg, header) in [
        (0u8, &br#"{"alg":"HS256","typ":"JWT"}"#[..]),
        (1, br#"{"alg":"HS384"}"#),
        (2, br#"{"alg":"HS512","kid":"k"}"#),
    ] {
        seeds.push(("jwt_token", [&[alg << 1], header, b"\n", claims].concat()));
    }
    seeds.push((
        "jwt_token",
        [&b"\x01"[..], checks::RS256_TOKEN.as_bytes()].concat(),
    ));

    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("filters/testdata/jwt");
    for file in ["jwks.json", "jwks-rotated.json", "tls-ca.pem"] {
        seeds.push(("jwks", std::fs::read(testdata.join(file)).unwrap()));
    }

    let conf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf");
    for file in [
        "trident.toml",
        "auth.toml",
        "canary.toml",
        "multi-pool.toml",
        "resilience.toml",
    ] {
        seeds.push(("config", std::fs::read(conf.join(file)).unwrap()));
    }
    seeds
}

#[test]
#[ignore = "writes the seed corpora; run by hand when an input format changes"]
fn write_seed_corpora() {
    for (index, (target, input)) in seeds().into_iter().enumerate() {
        let (_, check) = checks::TARGETS
            .iter()
            .find(|(name, _)| *name == target)
            .expect("a known target");
        check(&input);
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{index:02}")), input).unwrap();
    }
}
