//! A gRPC `ModelInfer` call on the wire, for the benches that send or peek one
//! (included with `#[path]` by those only, so the others carry no unused code).

use prost::Message;
use trident::protocol::kserve::{model_infer_request::InferInputTensor, ModelInferRequest};

/// A length-prefixed, uncompressed `ModelInferRequest` for `model` (at
/// `version`, empty: the latest) with one FP32 input of `shape` whose bytes are `raw`.
pub fn fp32_infer_frame(model: &str, version: &str, shape: Vec<i64>, raw: Vec<u8>) -> Vec<u8> {
    let request = ModelInferRequest {
        model_name: model.to_owned(),
        model_version: version.to_owned(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".to_owned(),
            datatype: "FP32".to_owned(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let message = request.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}
