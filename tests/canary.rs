//! Canary traffic through the real binary: mirrored requests compared with the
//! primary's answers on both protocols, mirrors that are dead or slow, and
//! weighted, header-matched and sequence-sticky splits with version rewrites.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use serde_json::json;
use trident::protocol::kserve::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use trident::protocol::kserve::ModelInferRequest;

fn fp32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn json_infer(values: &[f32]) -> String {
    json!({ "inputs": [{ "name": "INPUT0", "shape": [1, values.len()], "datatype": "FP32", "data": values }] })
        .to_string()
}

/// A binary-tensor request asking for a binary answer.
fn binary_infer(values: &[f32]) -> (String, Vec<u8>) {
    let header = json!({
        "inputs": [{ "name": "INPUT0", "shape": [1, values.len()], "datatype": "FP32",
                     "parameters": { "binary_data_size": values.len() * 4 } }],
        "outputs": [{ "name": "OUTPUT0", "parameters": { "binary_data": true } }]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&fp32_bytes(values));
    (header.len().to_string(), body)
}

fn grpc_infer(model: &str, values: &[f32]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, values.len() as i64],
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "OUTPUT0".into(),
            ..Default::default()
        }],
        raw_input_contents: vec![fp32_bytes(values).into()],
        ..Default::default()
    }
}

/// Pools `prod` (over `primary`) and `canary` (over `canary`), and route `m` to
/// prod with the route keys `route` (TOML after `pool = "prod"`).
async fn canary_proxy(primary: &MockTriton, canary: &str, route: &str) -> Trident {
    Trident::start(&format!(
        "[[pools]]\nname = \"prod\"\nendpoints = [ {} ]\n\
         [[pools]]\nname = \"canary\"\nendpoints = [ {canary} ]\n\
         [[routes]]\nmodel = \"m\"\npool = \"prod\"\n{route}\n",
        endpoint(primary)
    ))
    .await
}

fn comparisons(version: &str, result: &str) -> String {
    format!(
        "trident_mirror_comparisons_total{{model=\"m\",result=\"{result}\",route=\"m\",version=\"{version}\"}}"
    )
}

fn mirror_results(result: &str) -> String {
    format!("trident_mirror_requests_total{{pool=\"canary\",result=\"{result}\",route=\"m\"}}")
}

/// Waits until the version-2 mirror's (match, mismatch) counts reach `expected`.
async fn await_comparisons(trident: &Trident, expected: (f64, f64)) {
    for (result, count) in [("match", expected.0), ("mismatch", expected.1)] {
        assert!(
            wait_metric(trident, &comparisons("2", result), count).await,
            "{}",
            trident.metrics().await
        );
    }
}

const COMPARING_MIRROR: &str = "[routes.mirror]\npool = \"canary\"\nversion = \"2\"\n\
    absolute_tolerance = 0.001\nrelative_tolerance = 0.0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mirror_answers_are_compared() {
    let primary = mock("p1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    canary.control().serve_version("2");
    let trident = canary_proxy(&primary, &endpoint(&canary), COMPARING_MIRROR).await;
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    let values = [0.5, 1.5, -2.25, 4.0];
    // Identical, slightly different (within tolerance) and very different answers,
    // each as a JSON and as a binary-tensor exchange.
    let mut expected = (0.0, 0.0);
    for (offset, close) in [(0.0, true), (0.0001, true), (0.5, false)] {
        canary.control().set_output_offset(offset);
        for _ in 0..3 {
            let (status, _, body) = post(
                &client,
                &url,
                &[("content-type", "application/json")],
                json_infer(&values),
            )
            .await;
            assert_eq!(status, 200, "{body:?}");
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(answer["model_version"], "1", "the primary answers itself");
            assert_eq!(answer["outputs"][0]["data"], json!(values));
            let (json_len, binary) = binary_infer(&values);
            let (status, headers, body) = post(
                &client,
                &url,
                &[("inference-header-content-length", &json_len)],
                binary,
            )
            .await;
            assert_eq!(status, 200, "{body:?}");
            assert!(!header(&headers, "inference-header-content-length").is_empty());
            assert!(body.ends_with(&fp32_bytes(&values)));
        }
        if close {
            expected.0 += 6.0;
        } else {
            expected.1 += 6.0;
        }
        await_comparisons(&trident, expected).await;
    }
    let metrics = trident.metrics().await;
    assert_eq!(
        metric(&metrics, &comparisons("2", "match")),
        12.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, &comparisons("2", "mismatch")), 6.0);
    assert_eq!(metric(&metrics, &comparisons("2", "error")), 0.0);
    let max_abs = metric(
        &metrics,
        "trident_mirror_max_error{kind=\"abs\",model=\"m\",route=\"m\",version=\"2\"}",
    );
    assert!((max_abs - 0.5).abs() < 1e-6, "{metrics}");
    assert_eq!(metric(&metrics, &mirror_results("answered")), 18.0);
    assert_eq!(canary.control().infer_calls(), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mirror_answers_are_compared() {
    let primary = mock("p1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    canary.control().serve_version("2");
    let trident = canary_proxy(&primary, &endpoint(&canary), COMPARING_MIRROR).await;
    let mut grpc = client(trident.grpc_url()).await;
    let values = [0.5f32, 1.5, -2.25, 4.0];
    let mut expected = (0.0, 0.0);
    for (offset, close) in [(0.0, true), (0.0001, true), (0.5, false)] {
        canary.control().set_output_offset(offset);
        for _ in 0..4 {
            let answer = grpc
                .model_infer(grpc_infer("m", &values))
                .await
                .expect("primary answers")
                .into_inner();
            assert_eq!(answer.model_version, "1");
            assert_eq!(answer.raw_output_contents[0], fp32_bytes(&values));
        }
        if close {
            expected.0 += 4.0;
        } else {
            expected.1 += 4.0;
        }
        await_comparisons(&trident, expected).await;
    }
    let metrics = trident.metrics().await;
    assert_eq!(
        metric(&metrics, &comparisons("2", "match")),
        8.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, &comparisons("2", "mismatch")), 4.0);
    assert_eq!(canary.control().infer_calls(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_are_mirrored_and_compared_message_by_message() {
    let primary = mock("p1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    canary.control().serve_version("2");
    let trident = canary_proxy(&primary, &endpoint(&canary), COMPARING_MIRROR).await;
    let mut grpc = client_for(&trident).await;
    for (offset, result) in [(0.0, "match"), (0.5, "mismatch")] {
        canary.control().set_output_offset(offset);
        let requests: Vec<_> = (0..3).map(|i| grpc_infer("m", &[i as f32, 1.0])).collect();
        let response = grpc
            .model_stream_infer(tokio_stream::iter(requests))
            .await
            .expect("stream");
        let mut stream = response.into_inner();
        let mut answers = 0;
        while let Some(message) = stream.message().await.expect("stream message") {
            assert_eq!(message.infer_response.expect("answer").model_version, "1");
            answers += 1;
        }
        assert_eq!(answers, 3);
        assert!(
            wait_metric(&trident, &comparisons("2", result), 1.0).await,
            "{}",
            trident.metrics().await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tensors_are_mirrored_whole_on_both_protocols() {
    let primary = mock("p1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    canary.control().serve_version("2");
    let trident = canary_proxy(&primary, &endpoint(&canary), COMPARING_MIRROR).await;
    // 4 MiB of FP32 each way: many body chunks, fed to the copy as they pass.
    let values: Vec<f32> = (0..1 << 20).map(|i| i as f32 * 0.25).collect();
    let (json_len, binary) = binary_infer(&values);
    let (status, _, body) = post(
        &http1_client(),
        &trident.http_url("/v2/models/m/infer"),
        &[("inference-header-content-length", &json_len)],
        binary,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.ends_with(&fp32_bytes(&values)));
    let mut grpc = client(trident.grpc_url()).await;
    let answer = grpc
        .model_infer(grpc_infer("m", &values))
        .await
        .expect("primary answers")
        .into_inner();
    assert_eq!(answer.raw_output_contents[0].len(), values.len() * 4);
    assert!(
        wait_metric(&trident, &comparisons("2", "match"), 2.0).await,
        "{}",
        trident.metrics().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_slow_mirrors_cost_the_primary_nothing() {
    let primary = mock("p1", &["m", "d"]).await;
    let slow = mock("c1", &["m"]).await;
    slow.control()
        .set_latency(std::time::Duration::from_secs(3));
    let dead = free_port();
    // One pool of a dead endpoint, one of a slow one that takes 2 copies at a time
    // and queues 2 more.
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"prod\"\nendpoints = [ {} ]\n\
         [[pools]]\nname = \"dead\"\nendpoints = [ {{ http = \"{dead}\", grpc = \"{dead}\" }} ]\n\
         [pools.health]\nenabled = false\n\
         [[pools]]\nname = \"canary\"\nendpoints = [ {} ]\n\
         [[routes]]\nmodel = \"m\"\npool = \"prod\"\n\
         [routes.mirror]\npool = \"canary\"\nmax_concurrent = 2\nqueue = 2\ntimeout_ms = 10000\n\
         [[routes]]\nmodel = \"d\"\npool = \"prod\"\n\
         [routes.mirror]\npool = \"dead\"\n",
        endpoint(&primary),
        endpoint(&slow)
    ))
    .await;
    let client = Arc::new(http1_client());
    let mut grpc = client_for(&trident).await;
    let values = [1.0f32, 2.0];
    for model in ["m", "d"] {
        let url = trident.http_url(&format!("/v2/models/{model}/infer"));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    post(
                        &client,
                        &url,
                        &[("content-type", "application/json")],
                        json_infer(&[1.0, 2.0]),
                    )
                    .await
                })
            })
            .collect();
        for call in calls {
            let (status, _, body) = call.await.unwrap();
            assert_eq!(status, 200, "{body:?}");
        }
        for _ in 0..5 {
            let answer = grpc
                .model_infer(grpc_infer(model, &values))
                .await
                .expect("the primary answers whatever the mirror does")
                .into_inner();
            assert_eq!(answer.raw_output_contents[0], fp32_bytes(&values));
        }
    }
    let metrics = trident.metrics().await;
    // 25 copies for a mirror that holds 4: the rest are dropped at once.
    assert!(
        metric(&metrics, &mirror_results("dropped_queue_full")) >= 21.0,
        "{metrics}"
    );
    let dead_errors = "trident_mirror_requests_total{pool=\"dead\",result=\"error\",route=\"d\"}";
    assert!(
        wait_metric(&trident, dead_errors, 25.0).await,
        "{}",
        trident.metrics().await
    );
}

async fn client_for(trident: &Trident) -> GrpcClient {
    client(trident.grpc_url()).await
}

/// The `x-mock-backend` of `n` concurrent JSON infer calls to `m`, counted.
async fn spread(
    trident: &Trident,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> HashMap<String, usize> {
    let client = Arc::new(http1_client());
    let url = trident.http_url("/v2/models/m/infer");
    let mut counts = HashMap::new();
    for batch in 0..n / 50 {
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut all = vec![("content-type", "application/json")];
                    all.extend_from_slice(headers);
                    post(&client, &url, &all, json_infer(&[1.0])).await
                })
            })
            .collect();
        for call in calls {
            let (status, headers, body) = call.await.unwrap();
            assert_eq!(status, 200, "batch {batch}: {body:?}");
            *counts
                .entry(header(&headers, "x-mock-backend").to_owned())
                .or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_lands_within_statistical_bounds() {
    let stable = mock("s1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = canary_proxy(
        &stable,
        &endpoint(&canary),
        "[[routes.splits]]\npool = \"canary\"\npercent = 10\n",
    )
    .await;
    let n = 2000;
    let counts = spread(&trident, n, &[]).await;
    let to_canary = counts.get("c1").copied().unwrap_or(0) as f64;
    // Binomial(2000, 0.1): mean 200, sd 13.4; 5 sd either side.
    assert!((133.0..=267.0).contains(&to_canary), "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), n);
    let metrics = trident.metrics().await;
    let side = |s: &str| {
        metric(
            &metrics,
            &format!("trident_split_requests_total{{route=\"m\",side=\"{s}\"}}"),
        )
    };
    assert_eq!(side("canary"), to_canary);
    assert_eq!(side("prod") + side("canary"), n as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_split_rewrites_the_model_version_on_both_protocols() {
    let stable = mock("s1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    canary.control().serve_version("2");
    let trident = canary_proxy(
        &stable,
        &endpoint(&canary),
        "[[routes.splits]]\npool = \"canary\"\nversion = \"2\"\nheader = \"x-canary\"\n",
    )
    .await;
    let client = http1_client();
    for path in ["/v2/models/m/infer", "/v2/models/m/versions/1/infer"] {
        let url = trident.http_url(path);
        let (status, headers, body) =
            post(&client, &url, &[("x-canary", "1")], json_infer(&[1.0])).await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(header(&headers, "x-mock-backend"), "c1");
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["model_version"], "2");
        let (status, headers, body) = post(&client, &url, &[], json_infer(&[1.0])).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-mock-backend"), "s1");
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["model_version"], "1");
    }
    let mut grpc = client_for(&trident).await;
    for original in ["", "1"] {
        let mut request = tonic::Request::new(ModelInferRequest {
            model_version: original.into(),
            ..grpc_infer("m", &[3.0])
        });
        request
            .metadata_mut()
            .insert("x-canary", "yes".parse().unwrap());
        let response = grpc.model_infer(request).await.expect("canary answers");
        assert_eq!(backend(&response), "c1");
        assert_eq!(response.get_ref().model_version, "2");
        assert_eq!(
            response.get_ref().raw_output_contents[0],
            fp32_bytes(&[3.0])
        );
        let response = grpc
            .model_infer(ModelInferRequest {
                model_version: original.into(),
                ..grpc_infer("m", &[3.0])
            })
            .await
            .expect("stable answers");
        assert_eq!(backend(&response), "s1");
        assert_eq!(response.get_ref().model_version, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claims_pick_the_split_side() {
    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
    let stable = mock("s1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = Trident::start(&format!(
        "[filters.auth]\nkind = \"jwt\"\nhmac_secret = \"{SECRET}\"\n\
         [[pools]]\nname = \"prod\"\nendpoints = [ {} ]\n\
         [[pools]]\nname = \"canary\"\nendpoints = [ {} ]\n\
         [[routes]]\nmodel = \"m\"\npool = \"prod\"\nfilters = [\"auth\"]\n\
         [[routes.splits]]\npool = \"canary\"\nclaim = \"cohort\"\nclaim_value = \"beta\"\n",
        endpoint(&stable),
        endpoint(&canary)
    ))
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    for (cohort, backend) in [("beta", "c1"), ("gamma", "s1"), ("beta", "c1")] {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({ "exp": exp, "cohort": [cohort] }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let bearer = format!("Bearer {token}");
        let (status, headers, body) = post(
            &client,
            &url,
            &[("authorization", &bearer)],
            json_infer(&[1.0]),
        )
        .await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(
            header(&headers, "x-mock-backend"),
            backend,
            "cohort {cohort}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_stay_on_the_side_they_started_on() {
    let stable = mock("s1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = canary_proxy(
        &stable,
        &endpoint(&canary),
        "[[routes.splits]]\npool = \"canary\"\npercent = 50\n",
    )
    .await;
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    let mut sides = HashMap::new();
    for id in 1..=40u64 {
        let mut seen = Vec::new();
        for (start, end) in [(true, false), (false, false), (false, false), (false, true)] {
            let body = json!({
                "parameters": { "sequence_id": id, "sequence_start": start, "sequence_end": end },
                "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }]
            });
            let (status, headers, _) = post(&client, &url, &[], body.to_string()).await;
            assert_eq!(status, 200);
            seen.push(header(&headers, "x-mock-backend").to_owned());
        }
        assert!(
            seen.iter().all(|b| *b == seen[0]),
            "sequence {id}: {seen:?}"
        );
        *sides.entry(seen[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "both sides get sequences: {sides:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_only_requests_with_its_header() {
    let primary = mock("p1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = canary_proxy(
        &primary,
        &endpoint(&canary),
        "[routes.mirror]\npool = \"canary\"\nheader = \"x-shadow\"\nheader_value = \"on\"\n",
    )
    .await;
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    for shadow in ["on", "off", "on"] {
        let (status, _, _) = post(&client, &url, &[("x-shadow", shadow)], json_infer(&[1.0])).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = post(&client, &url, &[], json_infer(&[1.0])).await;
    assert_eq!(status, 200);
    assert!(wait_metric(&trident, &comparisons("1", "match"), 2.0).await);
    assert_eq!(canary.control().infer_calls(), 2);
}
