//! The gRPC front end: the generated tonic service served directly on hyper's HTTP/2
//! connection, so that headers can be added to every response and h2 tuned.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Request as HttpRequest};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::{Request, Response, Status, Streaming};

use super::compress::{Coding, GrpcInflateBody};
use super::tensor::{self, DType};
use super::{
    output_name, select_outputs, sleep_duration, ErrorKind, Fault, MockError, Shared,
    BACKEND_HEADER, ECHO_BACKEND, EXTENSIONS, FAIL_MODEL, GRPC_MAX_MESSAGE, H2_CONN_WINDOW,
    H2_MAX_FRAME, H2_SEND_BUF, H2_STREAM_WINDOW, MODEL_VERSION, REQUEST_ID_ECHO_HEADER,
    REQUEST_ID_HEADER, SLEEP_PARAM, TRITON_VERSION,
};
use crate::protocol::kserve::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use crate::protocol::kserve::infer_parameter::ParameterChoice;
use crate::protocol::kserve::model_infer_response::InferOutputTensor;
use crate::protocol::kserve::model_metadata_response::TensorMetadata;
use crate::protocol::kserve::repository_index_response::ModelIndex;
use crate::protocol::kserve::{
    ModelConfig, ModelConfigRequest, ModelConfigResponse, ModelInferRequest, ModelInferResponse,
    ModelInput, ModelMetadataRequest, ModelMetadataResponse, ModelOutput, ModelReadyRequest,
    ModelReadyResponse, ModelStatistics, ModelStatisticsRequest, ModelStatisticsResponse,
    ModelStreamInferResponse, RepositoryIndexRequest, RepositoryIndexResponse,
    RepositoryModelLoadRequest, RepositoryModelLoadResponse, RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};

const GRPC_ENCODING: &str = "grpc-encoding";
// `inference.DataType::TYPE_FP32`, used by the advertised (nominal) model signature.
const TYPE_FP32: i32 = 11;

/// What one gRPC connection needs: the tonic service, the backend header value and
/// the fault switches.
#[derive(Clone)]
pub(super) struct GrpcFront {
    service: GrpcInferenceServiceServer<GrpcMock>,
    backend_header: HeaderValue,
    shared: Arc<Shared>,
}

pub(super) fn service(shared: Arc<Shared>) -> GrpcFront {
    let backend_header = shared.backend_header.clone();
    let service = GrpcInferenceServiceServer::new(GrpcMock {
        shared: shared.clone(),
    })
    .max_decoding_message_size(GRPC_MAX_MESSAGE)
    .max_encoding_message_size(GRPC_MAX_MESSAGE);
    GrpcFront {
        service,
        backend_header,
        shared,
    }
}

fn is_infer_call(path: &str) -> bool {
    matches!(
        path,
        "/inference.GRPCInferenceService/ModelInfer"
            | "/inference.GRPCInferenceService/ModelStreamInfer"
    )
}

/// A 200 response with no message whose trailers carry `UNAVAILABLE`.
fn unavailable_in_trailers() -> http::Response<tonic::body::Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    trailers.insert("grpc-message", HeaderValue::from_static("mock unavailable"));
    let frames = futures::stream::iter([Ok::<_, Status>(hyper::body::Frame::trailers(trailers))]);
    let mut response = http::Response::new(tonic::body::Body::new(
        http_body_util::StreamBody::new(frames),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Serves one accepted connection as h2c (gRPC has no HTTP/1 mode).
pub(super) async fn serve_connection(front: GrpcFront, stream: TcpStream) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_SEND_BUF)
        .max_concurrent_streams(None);
    let service = service_fn(move |req: HttpRequest<Incoming>| {
        let mut grpc = front.service.clone();
        let backend = front.backend_header.clone();
        let front = front.clone();
        async move {
            let request_id = req.headers().get(REQUEST_ID_HEADER).cloned();
            let echoed = super::echo_headers(req.headers());
            let req = inflate_messages(req);
            if is_infer_call(req.uri().path()) {
                let fault = front.shared.control.before_infer(None).await;
                if fault != Fault::None {
                    // Like Triton, read the whole request before answering, so the
                    // failure never races the client's last DATA frame.
                    let (parts, body) = req.into_parts();
                    let _ = http_body_util::BodyExt::collect(body).await;
                    drop(parts);
                    return Ok(match fault {
                        Fault::UnavailableInTrailers => unavailable_in_trailers(),
                        _ => Status::unavailable("mock unavailable").into_http(),
                    });
                }
            }
            futures::future::poll_fn(|cx| {
                Service::<HttpRequest<GrpcBody>>::poll_ready(&mut grpc, cx)
            })
            .await?;
            // Real gRPC servers cancel calls past the client's deadline; tonic's own
            // transport layer would do this, but the service is served bare here. For
            // streams this bounds only the wait for the response to start.
            let deadline = crate::protocol::grpc::timeout(req.headers());
            let call = grpc.call(req);
            let mut resp = match deadline {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(resp) => resp?,
                    Err(_) => Status::deadline_exceeded("Deadline Exceeded").into_http(),
                },
                None => call.await?,
            };
            // Headers set here also reach trailers-only error responses, since tonic
            // sends those as a single header block.
            let headers = resp.headers_mut();
            headers.extend(echoed);
            headers.insert(BACKEND_HEADER, backend);
            if let Some(id) = request_id {
                headers.insert(REQUEST_ID_ECHO_HEADER, id);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("mock grpc connection ended: {e}");
    }
}

type GrpcBody = GrpcInflateBody<Incoming>;

/// Decompresses gzip/deflate messages (which Triton accepts) before tonic sees them, since
/// tonic's own support hinges on crate features this module cannot count on. Other
/// encodings are left for tonic to refuse with UNIMPLEMENTED.
fn inflate_messages(mut req: HttpRequest<Incoming>) -> HttpRequest<GrpcBody> {
    let value = req.headers().get(GRPC_ENCODING).map(|v| v.as_bytes());
    let coding = Coding::parse(value.unwrap_or_default()).unwrap_or(None);
    if coding.is_some() {
        req.headers_mut().remove(GRPC_ENCODING);
    }
    req.map(|body| GrpcInflateBody::new(body, coding))
}

fn to_status(e: MockError) -> Status {
    match e.kind {
        ErrorKind::InvalidArg => Status::invalid_argument(e.message),
        ErrorKind::NotFound => Status::not_found(e.message),
        ErrorKind::Internal => Status::internal(e.message),
    }
}

/// The mock's implementation of `inference.GRPCInferenceService`.
#[derive(Clone)]
pub(super) struct GrpcMock {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcMock {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.shared.control.server_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let req = request.into_inner();
        let ready = self.shared.is_ready(&req.name, &req.version);
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "triton".into(),
            version: TRITON_VERSION.into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let req = request.into_inner();
        self.shared
            .resolve(&req.name, &req.version)
            .map_err(to_status)?;
        let tensor = |name: &str| TensorMetadata {
            name: name.into(),
            datatype: "FP32".into(),
            shape: vec![-1],
        };
        Ok(Response::new(ModelMetadataResponse {
            name: req.name,
            versions: vec![MODEL_VERSION.into()],
            platform: ECHO_BACKEND.into(),
            inputs: vec![tensor("INPUT0")],
            outputs: vec![tensor("OUTPUT0")],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        infer(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    type ModelStreamInferStream = BoxStream<'static, Result<ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let shared = self.shared.clone();
        let responses = request.into_inner().then(move |item| {
            let shared = shared.clone();
            async move {
                // Like Triton, a failed request is reported in-band and the stream goes on.
                Ok(match infer(&shared, item?).await {
                    Ok(resp) => ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(resp),
                    },
                    Err(e) => ModelStreamInferResponse {
                        error_message: e.message,
                        infer_response: None,
                    },
                })
            }
        });
        Ok(Response::new(responses.boxed()))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let req = request.into_inner();
        self.shared
            .resolve(&req.name, &req.version)
            .map_err(to_status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(ModelConfig {
                name: req.name,
                platform: String::new(),
                max_batch_size: 0,
                input: vec![ModelInput {
                    name: "INPUT0".into(),
                    data_type: TYPE_FP32,
                    dims: vec![-1],
                }],
                output: vec![ModelOutput {
                    name: "OUTPUT0".into(),
                    data_type: TYPE_FP32,
                    dims: vec![-1],
                }],
                backend: ECHO_BACKEND.into(),
            }),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let req = request.into_inner();
        let models = self
            .shared
            .stats_models(Some(&req.name), &req.version)
            .map_err(to_status)?;
        let model_stats = models
            .into_iter()
            .map(|name| {
                let s = self.shared.stats_of(&name);
                ModelStatistics {
                    name,
                    version: MODEL_VERSION.into(),
                    last_inference: s.last_inference_ms,
                    inference_count: s.success_count,
                    execution_count: s.success_count,
                }
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        _request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let models = self
            .shared
            .models
            .iter()
            .map(|name| {
                let (state, reason) = self.shared.index_state(name);
                ModelIndex {
                    name: name.clone(),
                    version: MODEL_VERSION.into(),
                    state: state.into(),
                    reason: reason.into(),
                }
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let model = request.into_inner().model_name;
        self.shared
            .load_or_unload(&model, true)
            .map_err(to_status)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let model = request.into_inner().model_name;
        self.shared
            .load_or_unload(&model, false)
            .map_err(to_status)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

fn sleep_param(req: &ModelInferRequest) -> Option<Duration> {
    let ms = match req.parameters.get(SLEEP_PARAM)?.parameter_choice.as_ref()? {
        ParameterChoice::Int64Param(n) => i128::from(*n),
        ParameterChoice::Uint64Param(n) => i128::from(*n),
        ParameterChoice::DoubleParam(f) => *f as i128,
        ParameterChoice::StringParam(s) => s.trim().parse().ok()?,
        ParameterChoice::BoolParam(_) => return None,
    };
    sleep_duration(ms)
}

/// Runs one inference with the test hooks applied, recording statistics for known models.
async fn infer(shared: &Shared, req: ModelInferRequest) -> Result<ModelInferResponse, MockError> {
    shared.resolve(&req.model_name, &req.model_version)?;
    let started = Instant::now();
    if let Some(delay) = sleep_param(&req) {
        tokio::time::sleep(delay).await;
    }
    let model = req.model_name.clone();
    let result = if model == FAIL_MODEL {
        Err(MockError::internal("mock failure"))
    } else {
        echo(req).map(|answer| offset_outputs(answer, shared.control.output_offset()))
    };
    shared.record(&model, started, result.is_ok());
    result
}

/// `answer` with `offset` added to its floating-point outputs (the canary test hook).
fn offset_outputs(mut answer: ModelInferResponse, offset: f64) -> ModelInferResponse {
    if offset == 0.0 {
        return answer;
    }
    for (i, output) in answer.outputs.iter_mut().enumerate() {
        let Some(dtype) = DType::parse(&output.datatype) else {
            continue;
        };
        if let Some(raw) = answer.raw_output_contents.get_mut(i) {
            *raw = tensor::offset_floats(dtype, raw, offset).into();
        }
        if let Some(contents) = output.contents.as_mut() {
            contents
                .fp32_contents
                .iter_mut()
                .for_each(|v| *v += offset as f32);
            contents.fp64_contents.iter_mut().for_each(|v| *v += offset);
        }
    }
    answer
}

/// The identity model: raw inputs come back as raw outputs, typed contents as contents.
pub(super) fn echo(req: ModelInferRequest) -> Result<ModelInferResponse, MockError> {
    let model = req.model_name.as_str();
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(MockError::invalid(format!(
            "expected {} raw input contents for model '{model}', got {}",
            req.inputs.len(),
            req.raw_input_contents.len()
        )));
    }
    for (i, input) in req.inputs.iter().enumerate() {
        let dtype = DType::parse(&input.datatype).ok_or_else(|| {
            MockError::invalid(format!(
                "invalid datatype '{}' for input '{}'",
                input.datatype, input.name
            ))
        })?;
        match (raw, input.contents.is_some()) {
            (true, true) => {
                return Err(MockError::invalid(format!(
                    "contents field must not be specified when using raw_input_contents for '{}' for model '{model}'",
                    input.name
                )))
            }
            (true, false) => {
                let len = req.raw_input_contents.get(i).map_or(0, |b| b.len());
                tensor::check_raw_size(&input.name, model, dtype, &input.shape, len)
                    .map_err(MockError::invalid)?;
            }
            (false, false) => {
                return Err(MockError::invalid(format!(
                    "expected contents or raw_input_contents for input '{}' for model '{model}'",
                    input.name
                )))
            }
            (false, true) => {}
        }
    }

    let names: Vec<String> = req.inputs.iter().map(|i| output_name(&i.name)).collect();
    let selected = select_outputs(model, &names, req.outputs.iter().map(|o| o.name.as_str()))?;
    let mut outputs = Vec::with_capacity(selected.len());
    let mut raw_output_contents = Vec::new();
    for idx in selected {
        let (Some(input), Some(name)) = (req.inputs.get(idx), names.get(idx)) else {
            continue;
        };
        outputs.push(InferOutputTensor {
            name: name.clone(),
            datatype: input.datatype.clone(),
            shape: input.shape.clone(),
            parameters: Default::default(),
            contents: if raw { None } else { input.contents.clone() },
        });
        if let Some(bytes) = req.raw_input_contents.get(idx) {
            raw_output_contents.push(bytes.clone());
        }
    }
    Ok(ModelInferResponse {
        model_name: req.model_name.clone(),
        model_version: if req.model_version.is_empty() {
            MODEL_VERSION.into()
        } else {
            req.model_version.clone()
        },
        id: req.id.clone(),
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    })
}
