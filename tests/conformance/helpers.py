"""Shared helpers: build tritonclient inputs, run the same call on two endpoints, compare."""

import queue

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

GRPC_TIMEOUT_S = 120.0  # client_timeout for every gRPC call: a hang fails, it does not stall the suite
STREAM_TIMEOUT_S = 60.0

# Outputs each model produces (in model-config order).
OUTPUTS = {
    "identity_fp32": ["OUTPUT"],
    "identity_tls": ["OUTPUT"],
    "scale_b": ["OUTPUT"],
    "dotted.model-b": ["OUTPUT"],
    "add_sub": ["OUTPUT0", "OUTPUT1"],
    "echo_bytes": ["OUTPUT"],
    "repeat_decoupled": ["OUTPUT"],
    "whoami": ["SERVER", "PARAMS"],
}


def sample_inputs(model, n=16, seed=0):
    """Small deterministic inputs for a model (batch dimension 1)."""
    rng = np.random.default_rng(seed)
    if model in ("identity_fp32", "identity_tls", "scale_b", "dotted.model-b"):
        return {"INPUT": rng.standard_normal((1, n), dtype=np.float32)}
    if model == "add_sub":
        return {
            "INPUT0": rng.standard_normal((1, n), dtype=np.float32),
            "INPUT1": rng.standard_normal((1, n), dtype=np.float32),
        }
    if model == "echo_bytes":
        return {"INPUT": np.array([[b"hello", b"Trident", "gr\u00fc\u00dfe".encode(), b"", b"x" * 100]], dtype=object)}
    if model == "whoami":
        return {"INPUT": np.zeros((1, 1), dtype=np.float32)}
    if model == "repeat_decoupled":
        return {"INPUT": (np.arange(1, 4, dtype=np.float32) * (seed + 1))}
    raise KeyError(model)


def _dtype(arr):
    return np_to_triton_dtype(arr.dtype)


# --------------------------------------------------------------------------- HTTP


def http_infer(client, model, arrays, outputs=None, binary_in=True, binary_out=True, **kw):
    inputs = []
    for name, arr in arrays.items():
        i = httpclient.InferInput(name, list(arr.shape), _dtype(arr))
        i.set_data_from_numpy(arr, binary_data=binary_in)
        inputs.append(i)
    names = OUTPUTS[model] if outputs is None else outputs
    req_out = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in names]
    return client.infer(model, inputs, outputs=req_out, **kw)


# --------------------------------------------------------------------------- gRPC


def grpc_inputs(arrays):
    inputs = []
    for name, arr in arrays.items():
        i = grpcclient.InferInput(name, list(arr.shape), _dtype(arr))
        i.set_data_from_numpy(arr)
        inputs.append(i)
    return inputs


def grpc_infer(client, model, arrays, outputs=None, **kw):
    names = OUTPUTS[model] if outputs is None else outputs
    kw.setdefault("client_timeout", GRPC_TIMEOUT_S)
    return client.infer(
        model, grpc_inputs(arrays), outputs=[grpcclient.InferRequestedOutput(n) for n in names], **kw
    )


class StreamCollector:
    """Callback target for start_stream: keeps (result, error) in arrival order."""

    def __init__(self):
        self.q = queue.Queue()
        self.items = []

    def __call__(self, result, error):
        self.q.put((result, error))

    def collect(self, done, what):
        """Take responses until done(items) is true. Raise on a stream error or timeout."""
        while not done(self.items):
            try:
                result, error = self.q.get(timeout=STREAM_TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(
                    f"{what}: no stream response within {STREAM_TIMEOUT_S}s; got so far: "
                    f"{[r.get_response().id for r in self.items]}"
                ) from None
            if error is not None:
                raise AssertionError(f"{what}: stream callback got error: {describe_error(error)}")
            self.items.append(result)
        return self.items


def grpc_stream(endpoint, requests, per_request_responses=1, decoupled=False, **start_kw):
    """Run requests [(model, arrays, request_id)] on one gRPC stream.

    Returns {request_id: [ {output: array, ...}, ... ]} (responses of each request, in order)
    and the list of response ids in arrival order.
    """
    client = endpoint.grpc_client()
    col = StreamCollector()
    try:
        client.start_stream(callback=col, stream_timeout=STREAM_TIMEOUT_S * 2, **start_kw)
        for model, arrays, rid in requests:
            kw = {"enable_empty_final_response": True} if decoupled else {}
            client.async_stream_infer(
                model,
                grpc_inputs(arrays),
                request_id=rid,
                outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS[model]],
                **kw,
            )
        if decoupled:

            def done(items):
                finals = [r for r in items if _is_final(r)]
                return len(finals) >= len(requests)

        else:

            def done(items):
                return len(items) >= len(requests) * per_request_responses

        items = col.collect(done, f"stream to {endpoint.name}")
    finally:
        client.stop_stream()
        client.close()

    by_id = {}
    order = []
    model_of = {rid: model for model, _, rid in requests}
    for r in items:
        resp = r.get_response()
        order.append(resp.id)
        if decoupled and _is_final(r) and not resp.outputs:
            continue  # the empty final-response marker
        by_id.setdefault(resp.id, []).append({n: r.as_numpy(n) for n in OUTPUTS[model_of[resp.id]]})
    return by_id, order


def _is_final(result):
    p = result.get_response().parameters.get("triton_final_response")
    return p is not None and p.bool_param


# --------------------------------------------------------------------------- comparison


def outputs_of(result, names):
    return {n: result.as_numpy(n) for n in names}


def assert_outputs_equal(got, want, what):
    assert set(got) == set(want), f"{what}: output names differ: got {sorted(got)}, want {sorted(want)}"
    for name in want:
        g, w = got[name], want[name]
        assert g is not None, f"{what}: output {name} missing through the proxy"
        assert w is not None, f"{what}: output {name} missing in the direct answer"
        assert g.shape == w.shape, f"{what}: {name} shape {g.shape} != direct {w.shape}"
        assert g.dtype == w.dtype, f"{what}: {name} dtype {g.dtype} != direct {w.dtype}"
        if not np.array_equal(g, w):
            diff = np.flatnonzero(g.reshape(-1) != w.reshape(-1))
            raise AssertionError(
                f"{what}: {name} differs from direct at {diff.size} of {w.size} elements; "
                f"first at flat index {diff[0]}: {g.reshape(-1)[diff[0]]!r} != {w.reshape(-1)[diff[0]]!r}"
            )


def pb_dict(msg):
    return MessageToDict(msg, preserving_proto_field_name=True)


def assert_pb_equal(got, want, what):
    assert type(got) is type(want), f"{what}: message type {type(got).__name__} != {type(want).__name__}"
    assert got == want, f"{what}: through proxy {pb_dict(got)} != direct {pb_dict(want)}"


def describe_error(e):
    if isinstance(e, InferenceServerException):
        return f"InferenceServerException(status={e.status()!r}, message={e.message()!r}, debug={e.debug_details()!r})"
    return repr(e)


def call_error(fn):
    """Run fn; return the InferenceServerException it raised (or fail if it did not raise)."""
    try:
        value = fn()
    except InferenceServerException as e:
        return e
    raise AssertionError(f"expected InferenceServerException, call returned {value!r}")


def assert_same_error(got, want, what):
    g = (got.status(), got.message())
    w = (want.status(), want.message())
    assert g == w, f"{what}: through proxy (status, message) = {g!r}, direct = {w!r}"
