"""Errors produced by Triton must come back through Trident unchanged (status and message)."""

import numpy as np
import pytest

from helpers import assert_same_error, call_error, grpc_infer, http_infer, sample_inputs

UNKNOWN = "no_such_model_xyz"


def _unknown_http_calls(model):
    x = {"INPUT": np.zeros((1, 4), dtype=np.float32)}
    return {
        "infer": lambda c: http_infer(c, model, x, outputs=[]),
        "get_model_metadata": lambda c: c.get_model_metadata(model),
        "get_model_config": lambda c: c.get_model_config(model),
        "get_inference_statistics": lambda c: c.get_inference_statistics(model),
    }


def _unknown_grpc_calls(model):
    x = {"INPUT": np.zeros((1, 4), dtype=np.float32)}
    return {
        "infer": lambda c: grpc_infer(c, model, x, outputs=[]),
        "get_model_metadata": lambda c: c.get_model_metadata(model),
        "get_model_config": lambda c: c.get_model_config(model),
        "get_inference_statistics": lambda c: c.get_inference_statistics(model),
    }


@pytest.mark.parametrize("call", ["infer", "get_model_metadata", "get_model_config", "get_inference_statistics"])
def test_http_unknown_model(proxy, triton_a, call):
    fn = _unknown_http_calls(UNKNOWN)[call]
    want = call_error(lambda: fn(triton_a.http_client()))
    got = call_error(lambda: fn(proxy.http_client()))
    assert_same_error(got, want, f"HTTP {call} on unknown model")


@pytest.mark.parametrize("call", ["infer", "get_model_metadata", "get_model_config", "get_inference_statistics"])
def test_grpc_unknown_model(proxy, triton_a, call):
    fn = _unknown_grpc_calls(UNKNOWN)[call]
    want = call_error(lambda: fn(triton_a.grpc_client()))
    got = call_error(lambda: fn(proxy.grpc_client()))
    assert_same_error(got, want, f"gRPC {call} on unknown model")


def test_unknown_model_not_ready(proxy, triton_a):
    assert triton_a.http_client().is_model_ready(UNKNOWN) is False
    assert proxy.http_client().is_model_ready(UNKNOWN) is False, "HTTP is_model_ready(unknown) through proxy"
    assert triton_a.grpc_client().is_model_ready(UNKNOWN) is False
    assert proxy.grpc_client().is_model_ready(UNKNOWN) is False, "gRPC is_model_ready(unknown) through proxy"


MODEL_ERRORS = {
    # A routed model, but a request Triton rejects.
    "wrong_input_name": ("identity_fp32", {"NOT_AN_INPUT": np.zeros((1, 4), dtype=np.float32)}, {}),
    "wrong_dtype": ("identity_fp32", {"INPUT": np.zeros((1, 4), dtype=np.int32)}, {}),
    "batch_too_large": ("identity_fp32", {"INPUT": np.zeros((64, 4), dtype=np.float32)}, {}),
    "unknown_version": ("identity_fp32", sample_inputs("identity_fp32"), {"model_version": "7"}),
    "decoupled_unary": ("repeat_decoupled", sample_inputs("repeat_decoupled"), {}),
}
ROUTED_B_ERRORS = {
    "b_wrong_input_name": ("scale_b", {"NOT_AN_INPUT": np.zeros((1, 4), dtype=np.float32)}, {}),
}


def _model_error_params():
    out = [pytest.param(k, id=k) for k in MODEL_ERRORS]
    out += [pytest.param(k, id=k, marks=pytest.mark.routing) for k in ROUTED_B_ERRORS]
    return out


def _case(key):
    return MODEL_ERRORS.get(key) or ROUTED_B_ERRORS[key]


@pytest.mark.parametrize("case", _model_error_params())
def test_http_model_error(proxy, direct, case):
    model, arrays, kw = _case(case)
    want = call_error(lambda: http_infer(direct(model).http_client(), model, arrays, outputs=[], **kw))
    got = call_error(lambda: http_infer(proxy.http_client(), model, arrays, outputs=[], **kw))
    assert_same_error(got, want, f"HTTP infer error {case}")


@pytest.mark.parametrize("case", _model_error_params())
def test_grpc_model_error(proxy, direct, case):
    model, arrays, kw = _case(case)
    want = call_error(lambda: grpc_infer(direct(model).grpc_client(), model, arrays, outputs=[], **kw))
    got = call_error(lambda: grpc_infer(proxy.grpc_client(), model, arrays, outputs=[], **kw))
    assert_same_error(got, want, f"gRPC infer error {case}")
