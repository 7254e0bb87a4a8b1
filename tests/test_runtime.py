"""Runtime choice for inference-only work: what auto picks, and that every runtime computes the same thing."""

from __future__ import annotations

import numpy as np
import pytest

from floranet import runtime
from floranet.errors import ConfigError
from floranet.models import classifier

X = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype("float32")


@pytest.fixture(scope="module")
def extractor():
    model = classifier.build_classifier("resnet18", 3, image_size=48, weights=None)
    return classifier.feature_extractor(model)


def test_auto_choice_follows_the_machine(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "gpu_available", lambda: False)
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    c = runtime.choose()
    assert (c.runtime, c.precision) == ("openvino", "fp32") and "--precision bf16" in c.reason
    assert runtime.choose("auto", "bf16").key == "openvino-bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert runtime.choose().key == "openvino-fp32" and "2x" not in runtime.choose().reason
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    assert runtime.choose().key == "tensorflow-fp32" and "not installed" in runtime.choose().reason
    monkeypatch.setattr(runtime, "gpu_available", lambda: True)
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    assert runtime.choose().runtime == "tensorflow"
    assert runtime.choose("tensorflow", "fp32").key == "tensorflow-fp32"


def test_invalid_choices() -> None:
    with pytest.raises(ConfigError, match="Received: runtime='onnx'"):
        runtime.choose("onnx")
    with pytest.raises(ConfigError, match="Received: precision='fp16'"):
        runtime.choose("auto", "fp16")


@pytest.mark.skipif(not runtime.openvino_available(), reason="OpenVINO not installed")
def test_openvino_matches_tensorflow(extractor) -> None:
    reference = np.asarray(extractor(X, training=False))
    tf_fn = runtime.compile_inference(extractor, runtime.RuntimeChoice("tensorflow", "fp32", ""))
    np.testing.assert_allclose(tf_fn(X), reference, atol=1e-5)
    ov32 = runtime.compile_inference(extractor, runtime.RuntimeChoice("openvino", "fp32", ""))
    np.testing.assert_allclose(ov32(X), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    ov16 = runtime.compile_inference(extractor, runtime.RuntimeChoice("openvino", "bf16", ""))
    rel = np.linalg.norm(ov16(X) - reference) / np.linalg.norm(reference)
    assert rel < 0.05  # bf16 keeps ~3 significant digits
