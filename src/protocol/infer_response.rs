//! Decodes Triton's infer responses, HTTP/REST or gRPC, into the
//! protocol-neutral [`Answer`]s that mirroring compares.
//!
//! The bodies come from upstreams, so every size in them is checked against
//! the bytes actually there, and decompression is capped: a bad answer is an
//! `Err`, never a panic or an unbounded allocation.

use std::borrow::Cow;
use std::io::Read;

use bytes::Bytes;
use filters::mirror::compare::{Answer, Tensor, TensorData};
use flate2::read::{GzDecoder, ZlibDecoder};
use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use super::grpc::Encoding;
use super::http_body::INFERENCE_HEADER_CONTENT_LENGTH;
use crate::protocol::kserve::{
    model_infer_response::InferOutputTensor, InferTensorContents, ModelInferResponse,
    ModelStreamInferResponse,
};

/// More than any real answer; a body inflating beyond it is a zip bomb.
const MAX_INFLATED: u64 = 1 << 30;

/// The gRPC status a stream message carrying `error_message` stands for: Triton
/// reports the error in-band without a code.
const GRPC_UNKNOWN: u32 = 2;

/// Decodes an HTTP/REST infer response. Non-2xx answers decode to their status with no outputs (the body is not read).
/// `headers`: the response headers (`content-encoding`: identity/gzip/deflate; `inference-header-content-length` for binary-tensor responses).
pub fn decode_http(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Result<Answer, String> {
    if !(200..300).contains(&status) {
        return Ok(error_answer(status.into()));
    }
    let content_encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(|value| value.as_bytes());
    let body = inflate(body, Encoding::from_header(content_encoding))?;
    // The JSON length counts decompressed bytes, like the request's.
    let json_len = match headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
        None => body.len(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| format!("invalid {INFERENCE_HEADER_CONTENT_LENGTH} {value:?}"))?,
    };
    let (json, binary) = body.split_at_checked(json_len).ok_or_else(|| {
        format!(
            "{INFERENCE_HEADER_CONTENT_LENGTH} {json_len} exceeds the {}-byte body",
            body.len()
        )
    })?;
    let response: HttpResponse =
        serde_json::from_slice(json).map_err(|e| format!("invalid infer response JSON: {e}"))?;
    let mut binary = Bytes::copy_from_slice(binary);
    let outputs = response
        .outputs
        .into_iter()
        .map(|output| {
            let data = http_output_data(&output, &mut binary)?;
            Ok(Tensor {
                name: output.name,
                datatype: output.datatype,
                shape: output.shape,
                data,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if !binary.is_empty() {
        return Err(format!("{} bytes follow the binary outputs", binary.len()));
    }
    Ok(Answer {
        status: status.into(),
        model_version: response.model_version,
        outputs,
    })
}

/// The parts of Triton's JSON infer response that comparing needs.
#[derive(Deserialize)]
struct HttpResponse {
    #[serde(default)]
    model_version: String,
    #[serde(default)]
    outputs: Vec<HttpOutput>,
}

#[derive(Deserialize)]
struct HttpOutput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    data: Option<Value>,
}

/// An output's data: its JSON `data`, or its `binary_data_size` bytes taken
/// off the front of `binary` (binary outputs follow the JSON in output order).
fn http_output_data(output: &HttpOutput, binary: &mut Bytes) -> Result<TensorData, String> {
    let name = &output.name;
    if let Some(size) = output.parameters.get("binary_data_size") {
        let size = size
            .as_u64()
            .and_then(|size| usize::try_from(size).ok())
            .ok_or_else(|| format!("output {name:?}: invalid binary_data_size {size}"))?;
        if size > binary.len() {
            return Err(format!(
                "output {name:?}: binary_data_size {size} exceeds the {} bytes left",
                binary.len()
            ));
        }
        return Ok(TensorData::Raw(binary.split_to(size)));
    }
    let data = output
        .data
        .as_ref()
        .ok_or_else(|| format!("output {name:?} has neither data nor binary_data_size"))?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    Ok(TensorData::Json(flat))
}

/// Flattens nested `data` arrays in row-major order. serde_json caps nesting
/// at 128 levels, so the recursion is bounded.
fn flatten(value: &Value, flat: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, flat)),
        other => flat.push(other.clone()),
    }
}

/// Decodes a gRPC infer response body: the concatenated length-prefixed gRPC messages (1 byte compressed flag, 4 bytes big-endian length, message).
/// `grpc_status`: from the trailers (or trailers-only headers); `grpc_encoding`: the response's `grpc-encoding` header value (gzip/deflate/identity), used for messages whose flag is 1.
/// `stream`: ModelStreamInfer (each message is a ModelStreamInferResponse) rather than ModelInfer (exactly one ModelInferResponse).
pub fn decode_grpc(
    grpc_status: u8,
    grpc_encoding: Option<&[u8]>,
    body: &[u8],
    stream: bool,
) -> Result<Vec<Answer>, String> {
    if !stream && grpc_status != 0 {
        return Ok(vec![error_answer(grpc_status.into())]);
    }
    let encoding = Encoding::from_header(grpc_encoding);
    let mut answers = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (message, tail) = next_message(rest, encoding)?;
        rest = tail;
        let answer = if stream {
            let response = ModelStreamInferResponse::decode(&*message)
                .map_err(|e| format!("invalid ModelStreamInferResponse: {e}"))?;
            if !response.error_message.is_empty() {
                error_answer(GRPC_UNKNOWN)
            } else {
                let response = response.infer_response.ok_or(
                    "ModelStreamInferResponse has neither error_message nor infer_response",
                )?;
                grpc_answer(response)?
            }
        } else {
            let response = ModelInferResponse::decode(&*message)
                .map_err(|e| format!("invalid ModelInferResponse: {e}"))?;
            grpc_answer(response)?
        };
        answers.push(answer);
    }
    if stream {
        if grpc_status != 0 {
            answers.push(error_answer(grpc_status.into()));
        }
    } else if answers.len() != 1 {
        return Err(format!(
            "ModelInfer answered with {} messages, not one",
            answers.len()
        ));
    }
    Ok(answers)
}

/// The first length-prefixed message of `body`, decompressed, and the bytes after it.
fn next_message(body: &[u8], encoding: Encoding) -> Result<(Cow<'_, [u8]>, &[u8]), String> {
    let (&[flag, l0, l1, l2, l3], rest) = body
        .split_first_chunk::<5>()
        .ok_or("truncated gRPC message prefix")?;
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3]))
        .map_err(|_| "gRPC message length overflows")?;
    let (message, rest) = rest.split_at_checked(len).ok_or_else(|| {
        format!(
            "truncated gRPC message: {len} bytes announced, {} there",
            rest.len()
        )
    })?;
    let message = match (flag, encoding) {
        (0, _) => Cow::Borrowed(message),
        (1, Encoding::Gzip | Encoding::Deflate) => inflate(message, encoding)?,
        (1, _) => return Err("compressed gRPC message without a supported grpc-encoding".into()),
        _ => return Err(format!("invalid gRPC compressed-flag byte {flag}")),
    };
    Ok((message, rest))
}

/// A successful gRPC answer; outputs carry raw contents whichever form Triton used.
fn grpc_answer(response: ModelInferResponse) -> Result<Answer, String> {
    let ModelInferResponse {
        model_version,
        outputs,
        raw_output_contents,
        ..
    } = response;
    let outputs = if raw_output_contents.is_empty() {
        outputs
            .into_iter()
            .map(|output| {
                let raw = typed_to_raw(&output)?;
                Ok(grpc_tensor(output, raw))
            })
            .collect::<Result<Vec<_>, String>>()?
    } else {
        if raw_output_contents.len() != outputs.len() {
            return Err(format!(
                "{} raw_output_contents for {} outputs",
                raw_output_contents.len(),
                outputs.len()
            ));
        }
        outputs
            .into_iter()
            .zip(raw_output_contents)
            .map(|(output, raw)| grpc_tensor(output, raw))
            .collect()
    };
    Ok(Answer {
        status: 0,
        model_version,
        outputs,
    })
}

fn grpc_tensor(output: InferOutputTensor, raw: Bytes) -> Tensor {
    Tensor {
        name: output.name,
        datatype: output.datatype,
        shape: output.shape,
        data: TensorData::Raw(raw),
    }
}

/// An output's typed `contents` in Triton's binary layout, so that it compares
/// with the same tensor sent as raw contents. FP16, BF16 and unknown datatypes
/// have no typed field: their data is empty, which the comparison judges
/// against the shape.
fn typed_to_raw(output: &InferOutputTensor) -> Result<Bytes, String> {
    let empty = InferTensorContents::default();
    let contents = output.contents.as_ref().unwrap_or(&empty);
    let raw = match output.datatype.as_str() {
        "BOOL" => Some(
            contents
                .bool_contents
                .iter()
                .map(|&b| u8::from(b))
                .collect(),
        ),
        "INT8" => encode(&contents.int_contents, |&v| {
            i8::try_from(v).ok().map(i8::to_le_bytes)
        }),
        "INT16" => encode(&contents.int_contents, |&v| {
            i16::try_from(v).ok().map(i16::to_le_bytes)
        }),
        "INT32" => encode(&contents.int_contents, |v| Some(v.to_le_bytes())),
        "INT64" => encode(&contents.int64_contents, |v| Some(v.to_le_bytes())),
        "UINT8" => encode(&contents.uint_contents, |&v| {
            u8::try_from(v).ok().map(u8::to_le_bytes)
        }),
        "UINT16" => encode(&contents.uint_contents, |&v| {
            u16::try_from(v).ok().map(u16::to_le_bytes)
        }),
        "UINT32" => encode(&contents.uint_contents, |v| Some(v.to_le_bytes())),
        "UINT64" => encode(&contents.uint64_contents, |v| Some(v.to_le_bytes())),
        "FP32" => encode(&contents.fp32_contents, |v| Some(v.to_le_bytes())),
        "FP64" => encode(&contents.fp64_contents, |v| Some(v.to_le_bytes())),
        "BYTES" => length_prefixed(&contents.bytes_contents),
        _ => Some(Vec::new()),
    };
    raw.map(Bytes::from).ok_or_else(|| {
        format!(
            "output {:?}: a contents value does not fit {}",
            output.name, output.datatype
        )
    })
}

/// Concatenates fixed-size little-endian elements; None when one does not fit the datatype.
fn encode<T, const N: usize>(
    values: &[T],
    to_le_bytes: impl Fn(&T) -> Option<[u8; N]>,
) -> Option<Vec<u8>> {
    let mut raw = Vec::with_capacity(values.len().saturating_mul(N));
    for value in values {
        raw.extend_from_slice(&to_le_bytes(value)?);
    }
    Some(raw)
}

/// BYTES elements, each behind its 4-byte little-endian length.
fn length_prefixed(elements: &[Bytes]) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    for element in elements {
        raw.extend_from_slice(&u32::try_from(element.len()).ok()?.to_le_bytes());
        raw.extend_from_slice(element);
    }
    Some(raw)
}

fn error_answer(status: u32) -> Answer {
    Answer {
        status,
        model_version: String::new(),
        outputs: Vec::new(),
    }
}

/// Undoes `encoding` entirely; a truncated or corrupt stream, or one inflating
/// beyond [`MAX_INFLATED`], is an error.
fn inflate(compressed: &[u8], encoding: Encoding) -> Result<Cow<'_, [u8]>, String> {
    let mut inflated = Vec::new();
    let read = match encoding {
        Encoding::Identity => return Ok(Cow::Borrowed(compressed)),
        Encoding::Unsupported => return Err("unsupported compression".into()),
        Encoding::Gzip => GzDecoder::new(compressed)
            .take(MAX_INFLATED + 1)
            .read_to_end(&mut inflated),
        Encoding::Deflate => ZlibDecoder::new(compressed)
            .take(MAX_INFLATED + 1)
            .read_to_end(&mut inflated),
    };
    read.map_err(|e| format!("body does not decompress: {e}"))?;
    if inflated.len() as u64 > MAX_INFLATED {
        return Err(format!("body inflates beyond {MAX_INFLATED} bytes"));
    }
    Ok(Cow::Owned(inflated))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use filters::mirror::compare::{compare, Tolerance};
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    const EXACT: Tolerance = Tolerance {
        absolute: 0.0,
        relative: 0.0,
    };

    const VALUES: [f32; 4] = [0.5, -1.25, 0.1, 3.0e-8];

    fn fp32_raw(values: &[f32]) -> Bytes {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
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

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(name, value)| {
                let name = http::HeaderName::from_static(name);
                (name, HeaderValue::from_str(value).unwrap())
            })
            .collect()
    }

    fn json_response() -> Vec<u8> {
        json!({
            "model_name": "m",
            "model_version": "3",
            "id": "42",
            "parameters": {"sequence_id": 0},
            "outputs": [{
                "name": "OUTPUT0",
                "datatype": "FP32",
                "shape": [2, 2],
                "data": [[0.5, -1.25], [0.1, 3.0e-8]]
            }]
        })
        .to_string()
        .into_bytes()
    }

    fn frame(compressed: bool, message: &[u8]) -> Vec<u8> {
        let mut framed = vec![u8::from(compressed)];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        framed
    }

    fn output(name: &str, datatype: &str, shape: &[i64]) -> InferOutputTensor {
        InferOutputTensor {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape: shape.to_vec(),
            parameters: HashMap::new(),
            contents: None,
        }
    }

    fn raw_response() -> ModelInferResponse {
        ModelInferResponse {
            model_name: "m".to_string(),
            model_version: "3".to_string(),
            id: "42".to_string(),
            parameters: HashMap::new(),
            outputs: vec![output("OUTPUT0", "FP32", &[2, 2])],
            raw_output_contents: vec![fp32_raw(&VALUES)],
        }
    }

    #[test]
    fn json_responses_decode_flattened() {
        let answer = decode_http(200, &HeaderMap::new(), &json_response()).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.model_version, "3");
        let [tensor] = &answer.outputs[..] else {
            panic!("{answer:?}")
        };
        assert_eq!(
            (
                tensor.name.as_str(),
                tensor.datatype.as_str(),
                &tensor.shape[..]
            ),
            ("OUTPUT0", "FP32", &[2, 2][..])
        );
        assert_eq!(
            tensor.data,
            TensorData::Json(vec![json!(0.5), json!(-1.25), json!(0.1), json!(3.0e-8)])
        );
    }

    /// A response with a JSON output and two binary ones, as Triton lays it out.
    fn binary_response() -> (Vec<u8>, usize) {
        let strings = [3u8, 0, 0, 0, b'c', b'a', b't'];
        let mut body = json!({
            "model_name": "m",
            "outputs": [
                {"name": "A", "datatype": "FP32", "shape": [4],
                 "parameters": {"binary_data_size": 16}},
                {"name": "B", "datatype": "INT32", "shape": [1], "data": [7]},
                {"name": "C", "datatype": "BYTES", "shape": [1],
                 "parameters": {"binary_data_size": strings.len()}}
            ]
        })
        .to_string()
        .into_bytes();
        let json_len = body.len();
        body.extend_from_slice(&fp32_raw(&VALUES));
        body.extend_from_slice(&strings);
        (body, json_len)
    }

    #[test]
    fn binary_tensor_responses_split_after_the_json() {
        let (body, json_len) = binary_response();
        let headers = headers(&[("inference-header-content-length", &json_len.to_string())]);
        let answer = decode_http(200, &headers, &body).unwrap();
        assert_eq!(answer.model_version, "");
        let data: Vec<_> = answer.outputs.iter().map(|t| t.data.clone()).collect();
        assert_eq!(
            data,
            [
                TensorData::Raw(fp32_raw(&VALUES)),
                TensorData::Json(vec![json!(7)]),
                TensorData::Raw(Bytes::from_static(&[3, 0, 0, 0, b'c', b'a', b't'])),
            ]
        );
    }

    #[test]
    fn binary_sizes_must_add_up_to_the_body() {
        let (body, json_len) = binary_response();
        let headers = headers(&[("inference-header-content-length", &json_len.to_string())]);
        let short = decode_http(200, &headers, &body[..body.len() - 1]);
        assert!(short.unwrap_err().contains("exceeds"));
        let mut long = body.clone();
        long.push(0);
        assert!(decode_http(200, &headers, &long).is_err());
        // Without the header the whole body is taken for JSON.
        assert!(decode_http(200, &HeaderMap::new(), &body).is_err());
        let beyond = headers_with_len(body.len() + 1);
        assert!(decode_http(200, &beyond, &body).is_err());
        assert!(decode_http(200, &headers_with_len_str("12x"), &body).is_err());
    }

    fn headers_with_len(len: usize) -> HeaderMap {
        headers_with_len_str(&len.to_string())
    }

    fn headers_with_len_str(len: &str) -> HeaderMap {
        headers(&[("inference-header-content-length", len)])
    }

    #[test]
    fn compressed_http_bodies_are_inflated() {
        let plain = decode_http(200, &HeaderMap::new(), &json_response()).unwrap();
        let gzipped = gzip(&json_response());
        let gzip_headers = headers(&[("content-encoding", "gzip")]);
        assert_eq!(decode_http(200, &gzip_headers, &gzipped).unwrap(), plain);
        let deflate_headers = headers(&[("content-encoding", "deflate")]);
        assert_eq!(
            decode_http(200, &deflate_headers, &zlib(&json_response())).unwrap(),
            plain
        );

        // The binary split is measured after decompression.
        let (body, json_len) = binary_response();
        let mut binary_headers = headers_with_len(json_len);
        binary_headers.insert("content-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(
            decode_http(200, &binary_headers, &gzip(&body))
                .unwrap()
                .outputs
                .len(),
            3
        );

        assert!(decode_http(200, &gzip_headers, &gzipped[..gzipped.len() - 4]).is_err());
        let zlibbed = zlib(&json_response());
        assert!(decode_http(200, &deflate_headers, &zlibbed[..zlibbed.len() / 2]).is_err());
        assert!(decode_http(200, &gzip_headers, b"not gzip").is_err());
        let brotli = headers(&[("content-encoding", "br")]);
        assert!(decode_http(200, &brotli, &json_response()).is_err());
    }

    #[test]
    fn error_statuses_decode_without_reading_the_body() {
        let answer = decode_http(503, &HeaderMap::new(), b"\xff not json").unwrap();
        assert_eq!(answer, error_answer(503));
    }

    #[test]
    fn malformed_json_is_an_error() {
        for body in [
            &b"{\"outputs\": [{\"name\": \"A\""[..],
            br#"{"outputs": [{"name": "A", "datatype": "FP32", "shape": [1]}]}"#,
            br#"{"outputs": [{"name": "A", "datatype": "FP32", "shape": "x", "data": [1]}]}"#,
            br#"{"outputs": [{"name": "A", "datatype": "FP32", "shape": [1],
                 "parameters": {"binary_data_size": -1}}]}"#,
            b"",
        ] {
            assert!(
                decode_http(200, &HeaderMap::new(), body).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn grpc_raw_contents_decode() {
        let body = frame(false, &raw_response().encode_to_vec());
        let answers = decode_grpc(0, None, &body, false).unwrap();
        assert_eq!(
            answers,
            [Answer {
                status: 0,
                model_version: "3".to_string(),
                outputs: vec![Tensor {
                    name: "OUTPUT0".to_string(),
                    datatype: "FP32".to_string(),
                    shape: vec![2, 2],
                    data: TensorData::Raw(fp32_raw(&VALUES)),
                }],
            }]
        );

        let mut two_raw = raw_response();
        two_raw.raw_output_contents.push(Bytes::new());
        let body = frame(false, &two_raw.encode_to_vec());
        assert!(decode_grpc(0, None, &body, false).is_err());
    }

    #[test]
    fn grpc_typed_contents_match_raw_contents() {
        let mut typed = raw_response();
        typed.raw_output_contents.clear();
        typed.outputs[0].contents = Some(InferTensorContents {
            fp32_contents: VALUES.to_vec(),
            ..Default::default()
        });
        let typed = decode_grpc(0, None, &frame(false, &typed.encode_to_vec()), false).unwrap();
        let raw = decode_grpc(
            0,
            None,
            &frame(false, &raw_response().encode_to_vec()),
            false,
        )
        .unwrap();
        assert_eq!(typed, raw);
        let verdict = compare(&raw, &typed, EXACT);
        assert_eq!((verdict.mismatch, verdict.max_abs_error), (None, 0.0));
    }

    #[test]
    fn grpc_typed_contents_take_triton_layouts() {
        let mut response = raw_response();
        response.raw_output_contents.clear();
        let typed = |datatype: &str, contents: InferTensorContents| {
            let mut tensor = output("OUT", datatype, &[2]);
            tensor.contents = Some(contents);
            tensor
        };
        response.outputs = vec![
            typed(
                "INT8",
                InferTensorContents {
                    int_contents: vec![-1, 2],
                    ..Default::default()
                },
            ),
            typed(
                "UINT16",
                InferTensorContents {
                    uint_contents: vec![1, 65535],
                    ..Default::default()
                },
            ),
            typed(
                "BOOL",
                InferTensorContents {
                    bool_contents: vec![true, false],
                    ..Default::default()
                },
            ),
            typed(
                "BYTES",
                InferTensorContents {
                    bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::new()],
                    ..Default::default()
                },
            ),
            output("FP16", "FP16", &[0]),
        ];
        let answers =
            decode_grpc(0, None, &frame(false, &response.encode_to_vec()), false).unwrap();
        let raw: Vec<_> = answers[0]
            .outputs
            .iter()
            .map(|t| match &t.data {
                TensorData::Raw(raw) => raw.to_vec(),
                TensorData::Json(_) => panic!("{t:?}"),
            })
            .collect();
        assert_eq!(
            raw,
            [
                vec![0xff, 2],
                vec![1, 0, 0xff, 0xff],
                vec![1, 0],
                vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0],
                vec![],
            ]
        );

        response.outputs = vec![typed(
            "INT8",
            InferTensorContents {
                int_contents: vec![300],
                ..Default::default()
            },
        )];
        assert!(decode_grpc(0, None, &frame(false, &response.encode_to_vec()), false).is_err());
    }

    #[test]
    fn compressed_grpc_messages_are_inflated() {
        let message = raw_response().encode_to_vec();
        let plain = decode_grpc(0, None, &frame(false, &message), false).unwrap();
        let gzipped = frame(true, &gzip(&message));
        assert_eq!(
            decode_grpc(0, Some(b"gzip"), &gzipped, false).unwrap(),
            plain
        );
        let zlibbed = frame(true, &zlib(&message));
        assert_eq!(
            decode_grpc(0, Some(b"deflate"), &zlibbed, false).unwrap(),
            plain
        );
        // The flag decides, not the header: an uncompressed message in a gzip call.
        assert_eq!(
            decode_grpc(0, Some(b"gzip"), &frame(false, &message), false).unwrap(),
            plain
        );

        assert!(decode_grpc(0, None, &gzipped, false).is_err());
        assert!(decode_grpc(0, Some(b"identity"), &gzipped, false).is_err());
        assert!(decode_grpc(0, Some(b"snappy"), &gzipped, false).is_err());
        let corrupt = frame(true, &gzip(&message)[..10]);
        assert!(decode_grpc(0, Some(b"gzip"), &corrupt, false).is_err());
    }

    #[test]
    fn streams_answer_per_message_then_the_final_status() {
        let ok = ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(raw_response()),
        };
        let failed = ModelStreamInferResponse {
            error_message: "model crashed".to_string(),
            infer_response: None,
        };
        let mut body = frame(false, &ok.encode_to_vec());
        body.extend(frame(false, &failed.encode_to_vec()));
        let answers = decode_grpc(0, None, &body, true).unwrap();
        let unary = decode_grpc(
            0,
            None,
            &frame(false, &raw_response().encode_to_vec()),
            false,
        )
        .unwrap();
        assert_eq!(answers, [unary[0].clone(), error_answer(2)]);

        let cut_short = decode_grpc(14, None, &body, true).unwrap();
        assert_eq!(cut_short.len(), 3);
        assert_eq!(cut_short[2], error_answer(14));
        assert_eq!(decode_grpc(0, None, b"", true).unwrap(), []);
    }

    #[test]
    fn trailers_only_errors_decode_to_their_status() {
        assert_eq!(decode_grpc(5, None, b"", false).unwrap(), [error_answer(5)]);
        // The status wins over whatever body came with it.
        assert_eq!(
            decode_grpc(13, None, b"\x00\xff", false).unwrap(),
            [error_answer(13)]
        );
        assert_eq!(decode_grpc(5, None, b"", true).unwrap(), [error_answer(5)]);
    }

    #[test]
    fn bad_grpc_framing_is_an_error() {
        let body = frame(false, &raw_response().encode_to_vec());
        for cut in 1..body.len() {
            assert!(
                decode_grpc(0, None, &body[..cut], false).is_err(),
                "cut {cut}"
            );
        }
        assert!(decode_grpc(0, None, b"", false).is_err());
        let mut twice = body.clone();
        twice.extend_from_slice(&body);
        assert!(decode_grpc(0, None, &twice, false).is_err());
        let mut bad_flag = body.clone();
        bad_flag[0] = 2;
        assert!(decode_grpc(0, None, &bad_flag, false).is_err());
        assert!(decode_grpc(0, None, &frame(false, b"\xff\xff\xff"), false).is_err());
        // A length claiming 4 GiB with nothing behind it.
        assert!(decode_grpc(0, None, b"\x00\xff\xff\xff\xff", true).is_err());
    }

    #[test]
    fn http_json_and_grpc_raw_answers_of_the_same_values_match() {
        let mut http = decode_http(200, &HeaderMap::new(), &json_response()).unwrap();
        // Statuses are protocol-specific (a comparison never mixes protocols): only the data is at stake.
        http.status = 0;
        let grpc = decode_grpc(
            0,
            None,
            &frame(false, &raw_response().encode_to_vec()),
            false,
        )
        .unwrap();
        let verdict = compare(&[http.clone()], &grpc, EXACT);
        assert_eq!((verdict.mismatch, verdict.max_abs_error), (None, 0.0));
        let verdict = compare(&grpc, &[http], EXACT);
        assert_eq!(verdict.mismatch, None);
    }
}
