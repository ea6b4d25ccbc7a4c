#!/usr/bin/env python3
"""Serve one set of conformance-test models with PyTriton (a real Triton 2.5x).

Started by conftest.py, once per set, in its own process group:

    serve_models.py --set a --http-port P --grpc-port Q --metrics-port R

Set "a" (Trident pool "a", also the default route):
    identity_fp32   FP32 [-1] -> FP32 [-1]                  (batched, echoes its input)
    add_sub         FP32 INPUT0, INPUT1 -> OUTPUT0 = a+b, OUTPUT1 = a-b
    echo_bytes      BYTES [-1] -> BYTES [-1]               (upper-cases every string)
    repeat_decoupled FP32 [-1] -> FP32 [-1], decoupled: one response per element,
                    response i carries input[i] * (i + 1)  (gRPC streaming only)
    whoami          -> SERVER BYTES [1] "a", PARAMS BYTES [1] = JSON of the request
                    parameters (forwarded "trident-fwd-*" headers show up there)
Set "b" (Trident pool "b"):
    scale_b         FP32 [-1] -> FP32 [-1] = input * 2     (exists only on B)
    dotted.model-b  same as scale_b; a model name with "." and "-"
    whoami          -> BYTES [1] "b"
Set "t" (Trident pool "t", the TLS checks): gRPC over TLS, see --grpc-tls-*
    identity_tls    same as identity_fp32; exists only on T
    whoami          -> BYTES [1] "t"

"whoami" exists on both servers with different answers: Trident routes it to pool
"b" explicitly, so the answer proves where an exact-name route went.

With --grpc-tls-cert/--grpc-tls-key, Triton's gRPC port speaks only TLS; with
--grpc-tls-root as well, it requires a client certificate signed by that CA (mutual TLS).
Triton's HTTP and metrics ports stay plain (Triton has no TLS for them).

The Triton server id ("triton-a"/"triton-b"/"triton-t") shows in get_server_metadata, which proves
where server-level calls went.
"""

import argparse
import json
import logging
import pathlib
import signal
import sys
import tempfile

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

MAX_BATCH = 8


@batch
def identity_fp32(INPUT):
    return {"OUTPUT": INPUT}


@batch
def add_sub(INPUT0, INPUT1):
    return {"OUTPUT0": INPUT0 + INPUT1, "OUTPUT1": INPUT0 - INPUT1}


@batch
def echo_bytes(INPUT):
    upper = np.vectorize(lambda b: bytes(b).upper(), otypes=[object])(INPUT)
    return {"OUTPUT": upper.astype(np.bytes_)}


@batch
def scale_b(INPUT):
    return {"OUTPUT": INPUT * np.float32(2.0)}


def make_whoami(name):
    """Answers the server name and the request's parameters (incl. forwarded headers) as JSON."""

    def whoami(requests):
        out = []
        for req in requests:
            n = req["INPUT"].shape[0]
            params = json.dumps(req.parameters or {}, sort_keys=True).encode()
            out.append(
                {
                    "SERVER": np.array([[name.encode()]] * n, dtype=np.bytes_),
                    "PARAMS": np.array([[params]] * n, dtype=np.bytes_),
                }
            )
        return out

    return whoami


def repeat_decoupled(requests):
    """Decoupled: yields len(INPUT) rounds; round i answers input[i] * (i + 1) for each request."""
    inputs = [r["INPUT"] for r in requests]
    rounds = max(int(x.shape[-1]) for x in inputs)
    for i in range(rounds):
        yield [
            {"OUTPUT": np.array([x[min(i, x.shape[-1] - 1)] * np.float32(i + 1)], dtype=np.float32)}
            for x in inputs
        ]


def bind_set(triton, which):
    batched = ModelConfig(max_batch_size=MAX_BATCH)
    if which == "a":
        triton.bind(
            model_name="identity_fp32",
            infer_func=identity_fp32,
            inputs=[Tensor(name="INPUT", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="OUTPUT", dtype=np.float32, shape=(-1,))],
            config=batched,
        )
        triton.bind(
            model_name="add_sub",
            infer_func=add_sub,
            inputs=[
                Tensor(name="INPUT0", dtype=np.float32, shape=(-1,)),
                Tensor(name="INPUT1", dtype=np.float32, shape=(-1,)),
            ],
            outputs=[
                Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,)),
                Tensor(name="OUTPUT1", dtype=np.float32, shape=(-1,)),
            ],
            config=batched,
        )
        triton.bind(
            model_name="echo_bytes",
            infer_func=echo_bytes,
            inputs=[Tensor(name="INPUT", dtype=np.bytes_, shape=(-1,))],
            outputs=[Tensor(name="OUTPUT", dtype=np.bytes_, shape=(-1,))],
            config=batched,
        )
        triton.bind(
            model_name="repeat_decoupled",
            infer_func=repeat_decoupled,
            inputs=[Tensor(name="INPUT", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="OUTPUT", dtype=np.float32, shape=(1,))],
            config=ModelConfig(batching=False, decoupled=True),
        )
    elif which == "b":
        for model_name in ("scale_b", "dotted.model-b"):
            triton.bind(
                model_name=model_name,
                infer_func=scale_b,
                inputs=[Tensor(name="INPUT", dtype=np.float32, shape=(-1,))],
                outputs=[Tensor(name="OUTPUT", dtype=np.float32, shape=(-1,))],
                config=batched,
            )
    elif which == "t":
        triton.bind(
            model_name="identity_tls",
            infer_func=identity_fp32,
            inputs=[Tensor(name="INPUT", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="OUTPUT", dtype=np.float32, shape=(-1,))],
            config=batched,
        )
    else:
        raise ValueError(which)
    triton.bind(
        model_name="whoami",
        infer_func=make_whoami(which),
        inputs=[Tensor(name="INPUT", dtype=np.float32, shape=(1,))],
        outputs=[
            Tensor(name="SERVER", dtype=np.bytes_, shape=(1,)),
            Tensor(name="PARAMS", dtype=np.bytes_, shape=(1,)),
        ],
        config=batched,
    )


# Loadable models of the servers' own repositories, not loaded at start (PyTriton runs
# Triton in explicit model-control mode): test_repository.py loads and unloads them
# through a Trident whose pool holds A and B. "repo_identity" is in A's and B's,
# "repo_only_b" in B's alone.
REPOSITORY_MODELS = {"a": ["repo_identity"], "b": ["repo_identity", "repo_only_b"], "t": []}

REPOSITORY_MODEL_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT", data_type: TYPE_FP32, dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""

REPOSITORY_MODEL_PY = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy())]
            )
            for r in requests
        ]
"""


def write_repository_models(repo, which):
    for name in REPOSITORY_MODELS[which]:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(REPOSITORY_MODEL_CONFIG.format(name=name))
        (repo / name / "1" / "model.py").write_text(REPOSITORY_MODEL_PY)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=["a", "b", "t"], required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--grpc-tls-cert", type=pathlib.Path, help="PEM server certificate: gRPC speaks TLS")
    ap.add_argument("--grpc-tls-key", type=pathlib.Path, help="PEM key of --grpc-tls-cert")
    ap.add_argument("--grpc-tls-root", type=pathlib.Path, help="PEM CA: require client certificates it signed")
    args = ap.parse_args()
    if (args.grpc_tls_cert is None) != (args.grpc_tls_key is None):
        ap.error("--grpc-tls-cert and --grpc-tls-key go together")
    if args.grpc_tls_root is not None and args.grpc_tls_cert is None:
        ap.error("--grpc-tls-root needs --grpc-tls-cert/--grpc-tls-key")

    logging.basicConfig(level=logging.INFO, format=f"[set {args.set}] %(asctime)s %(name)s %(levelname)s: %(message)s")

    # SIGTERM from the test harness: leave serve() through its KeyboardInterrupt path, which stops Triton.
    def _on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _on_term)

    # PyTriton loads its models through the repository API, so they never show in
    # get_model_repository_index. An (unloadable) marker directory in an own model
    # repository gives the index a per-server entry: "repo_marker_a" / "repo_marker_b".
    repo_dir = tempfile.TemporaryDirectory(prefix=f"trident-conformance-repo-{args.set}-")
    repo = pathlib.Path(repo_dir.name)
    (repo / f"repo_marker_{args.set}").mkdir()
    write_repository_models(repo, args.set)

    tls = {}
    if args.grpc_tls_cert is not None:
        tls = dict(grpc_use_ssl=True, grpc_server_cert=args.grpc_tls_cert, grpc_server_key=args.grpc_tls_key)
        if args.grpc_tls_root is not None:
            tls.update(grpc_use_ssl_mutual=True, grpc_root_cert=args.grpc_tls_root)

    config = TritonConfig(
        id=f"triton-{args.set}",
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=2,
        # Headers matching this are handed to the model as request parameters; "whoami"
        # echoes them, which shows that Trident passes client headers/metadata through.
        http_header_forward_pattern="^trident-fwd-.*",
        grpc_header_forward_pattern="^trident-fwd-.*",
        log_verbose=args.log_verbose,
        model_repository=repo,
        # The marker directory below cannot load; keep serving anyway.
        exit_on_error=False,
        # Triton 2.51 (bundled by nvidia-pytriton) has no --http-max-input-size; newer Tritons
        # default it to 64 MB. TritonConfig exposes no such field either, so nothing to raise here.
        **tls,
    )
    # PyTriton by default protects model-repository/statistics/... with a generated token;
    # the suite calls those APIs with plain tritonclient, so no restrictions.
    security = TritonSecurityConfig(restricted_endpoints=[])
    triton = Triton(config=config, security_config=security)
    try:
        bind_set(triton, args.set)
        triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()
        repo_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
