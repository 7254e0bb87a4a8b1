"""Runtime choice for inference-only work: what auto picks, and that every runtime computes the same thing."""

from __future__ import annotations

import numpy as np
import pytest

from floranet.errors import ConfigError
from floranet.inference import runtime
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
    assert (c.runtime, c.precision) == ("openvino", "bf16") and "natively" in c.reason
    # the speed-up was measured on AVX512_BF16 only: the reason says so, not "(AVX512_BF16/AMX), about 2x fp32"
    assert "about 2x fp32 as measured on an AVX512_BF16 CPU (AMX not measured)" in c.reason
    assert runtime.choose("auto", "fp32").key == "openvino-fp32"
    assert runtime.choose("tensorflow").key == "tensorflow-fp32"  # TensorFlow inference stays fp32
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert runtime.choose().key == "openvino-fp32" and "no native bf16" in runtime.choose().reason
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    assert runtime.choose().key == "tensorflow-fp32" and "not installed" in runtime.choose().reason
    monkeypatch.setattr(runtime, "gpu_available", lambda: True)
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    assert runtime.choose().runtime == "tensorflow"
    assert runtime.choose("tensorflow", "fp32").key == "tensorflow-fp32"


def test_bf16_asked_for_on_a_cpu_without_it_is_said_to_be_emulated(monkeypatch) -> None:
    """--precision bf16 on an AVX2 CPU was accepted silently ("as requested"), though it is emulated there."""
    monkeypatch.setattr(runtime, "gpu_available", lambda: False)
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    for choice in (runtime.choose("openvino", "bf16"), runtime.choose_inference("auto", "bf16")):
        assert choice.key == "openvino-bf16" and "no native bf16" in choice.reason and "emulated" in choice.reason
    assert "emulated" in runtime.training_precision("bf16")[1]
    assert "OpenVINO" not in runtime.training_precision("bf16")[1]  # a Keras stage: OpenVINO plays no part
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert "emulated" not in runtime.choose("openvino", "bf16").reason
    assert runtime.training_precision("bf16") == ("mixed_bfloat16", "as requested")
    monkeypatch.setattr(runtime, "gpu_available", lambda: False)
    policy, why = runtime.training_precision("auto")
    assert policy == "mixed_bfloat16" and "1.5x faster than fp32 as measured on an AVX512_BF16 CPU" in why
    assert "(AMX not measured" in why


def test_the_cpu_model_tells_apart_generations_of_one_name(monkeypatch) -> None:
    """Benchmarks and runs recorded "AMD EPYC" for CPUs whose fp32 peak differed 2.6x."""
    from floranet.utils import system

    two = ["processor\t: 0", "cpu family\t: 26", "model\t\t: 2", "model name\t: AMD EPYC", ""]
    monkeypatch.setattr(system, "_cpuinfo_lines", lambda: [*two, "processor\t: 1", "cpu family\t: 25", "model\t: 1"])
    assert system.cpu_model_id() == "family 26, model 2"
    assert system.environment()["cpu model"] == "family 26, model 2"
    monkeypatch.setattr(system, "_cpuinfo_lines", lambda: ["Features\t: fp asimd", "CPU part\t: 0xd0c"])  # ARM
    assert system.cpu_model_id() == "" and system.environment()["cpu model"] == "?"


def test_the_recorded_cores_are_the_ones_the_process_may_use(monkeypatch) -> None:
    """Runs and benchmarks recorded os.cpu_count(): `taskset -c 0 floranet train` was "7 s on AMD EPYC, 2 cores"."""
    from floranet.utils import system

    monkeypatch.setattr(system.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(system, "usable_cpus", lambda: 1)
    assert system.environment()["cores"] == "1 of 2"
    monkeypatch.setattr(system, "usable_cpus", lambda: 2)
    assert system.environment()["cores"] == "2"


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


def test_int8_is_openvino_for_training_only(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    assert runtime.choose("auto", "int8", images=1).key == "openvino-int8"  # int8 exists only on OpenVINO
    assert runtime.training_precision("int8")[0] == "float32"  # the trained layers stay fp32
    with pytest.raises(ConfigError, match="Received: runtime='tensorflow', precision='int8'"):
        runtime.choose("tensorflow", "int8")
    with pytest.raises(ConfigError, match="Received: precision='int8'"):
        runtime.choose_inference("auto", "int8")  # predict/serve have no calibration images


def test_inference_in_bf16_is_openvino_however_few_the_images(monkeypatch) -> None:
    """--precision bf16 alone failed for a job under 256 images: auto chose TensorFlow, which refused bf16."""
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    for images in (1, 10_000, None):
        assert runtime.choose_inference("auto", "bf16", images=images).key == "openvino-bf16"
    with pytest.raises(ConfigError, match="Received: runtime='tensorflow', precision='bf16'"):
        runtime.choose_inference("tensorflow", "bf16")  # asked for by name: said, not overridden


@pytest.mark.skipif(not runtime.openvino_available(), reason="OpenVINO not installed")
def test_int8_extraction_is_calibrated_and_close(extractor) -> None:
    pytest.importorskip("nncf")
    reference = np.asarray(extractor(X, training=False))
    with pytest.raises(ConfigError, match="calibration"):
        runtime.compile_inference(extractor, runtime.RuntimeChoice("openvino", "int8", ""))
    calibration = np.random.default_rng(1).uniform(0, 255, (16, 48, 48, 3)).astype("float32")
    int8 = runtime.compile_inference(extractor, runtime.RuntimeChoice("openvino", "int8", ""), calibration=calibration)
    rel = np.linalg.norm(int8(X) - reference) / np.linalg.norm(reference)
    assert 0 < rel < 0.2  # quantized (not bit-equal) yet close


def test_auto_keeps_tensorflow_for_small_jobs(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "gpu_available", lambda: False)
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    small = runtime.choose(images=runtime.AUTO_MIN_IMAGES - 1)
    assert small.runtime == "tensorflow" and "would take longer" in small.reason
    assert runtime.choose(images=runtime.AUTO_MIN_IMAGES).runtime == "openvino"
    assert runtime.choose(images=None).runtime == "openvino"  # a server: start-up is amortised
    assert runtime.choose("openvino", images=1).runtime == "openvino"  # an explicit choice is kept


def test_predict_and_evaluate_on_openvino_match_tensorflow(tiny_run, tmp_path) -> None:
    pytest.importorskip("openvino")
    from floranet import inference as predict
    from floranet.evaluation import evaluate_run
    from imagesets import make_image_folder

    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=5)
    tf_rows = predict.load(tiny_run, runtime="tensorflow").predict([folder])
    ov = predict.load(tiny_run, runtime="openvino", precision="fp32")
    ov_rows = ov.predict([folder])
    assert ov.choice is not None and ov.choice.key == "openvino-fp32"
    assert [r.file for r in ov_rows] == [r.file for r in tf_rows] and len(tf_rows) == 10
    for a, b in zip(tf_rows, ov_rows, strict=True):
        assert a.top_k[0][0] == b.top_k[0][0]
        assert abs(a.top_k[0][1] - b.top_k[0][1]) < 1e-4
    auto = predict.load(tiny_run)  # the run's compiled model, checked at training time: no conversion needed
    auto.predict([folder])
    assert auto.compiled is not None and auto.keras_model is None  # Keras was never loaded
    assert auto.choice is not None and auto.choice.key == "openvino-fp32"  # 10 images: as exact as model.keras
    ev_tf = evaluate_run(tiny_run, runtime="tensorflow")
    ev_ov = evaluate_run(tiny_run, runtime="openvino", precision="fp32")
    assert ev_ov.extra["evaluated_on"] == "compiled model (openvino fp32)"
    np.testing.assert_allclose(ev_ov.probs, ev_tf.probs, atol=1e-4)
    with pytest.raises(ConfigError, match="bf16"):
        predict.load(tiny_run, runtime="tensorflow", precision="bf16").predict([folder])


def test_openvino_streaming_map_returns_every_batch_in_order(extractor) -> None:
    pytest.importorskip("openvino")
    fn = runtime.compile_inference(extractor, runtime.RuntimeChoice("openvino", "fp32", "test"), streaming=True)
    assert fn.in_flight >= 2
    batches = [X[:1], X, X[1:3], X[::-1], X[2:]]  # more batches than requests, mixed sizes
    outs = list(fn.map(iter(batches)))
    assert len(outs) == len(batches)
    for b, o in zip(batches, outs, strict=True):
        np.testing.assert_allclose(o, fn(b), atol=1e-5)
    assert list(fn.map(iter([]))) == []


def test_the_compiled_model_reuses_stage_1s_converted_backbone(tmp_path, monkeypatch) -> None:
    """Without fine-tuning, the run's IR is stage 1's converted backbone with the head appended: one conversion,
    and the same agreement check with model.keras."""
    import json

    from floranet import config
    from floranet.inference import runtime
    from floranet.workflows import train
    from imagesets import TINY_MODEL, make_image_folder

    converted: list[str] = []
    real = runtime.to_openvino

    def counting(model):  # type: ignore[no-untyped-def]
        converted.append(model.name)
        return real(model)

    monkeypatch.setattr(runtime, "to_openvino", counting)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    settings = {**TINY_MODEL, "runtime": "openvino", "precision": "fp32", "dropout": 0.2}
    cfg = config.resolve(
        data_dir=str(data), out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=0, batch_size=8, **settings
    )
    run = train(cfg, progress=False, say=lambda m: None).run_dir
    info = json.loads((run / "inference" / "compiled.json").read_text())
    assert info["agrees"] and info["max_abs_diff"] <= 1e-4 and info["features_max_rel_diff"] <= 1e-4, info
    assert converted == ["features"]  # stage 1's extractor only; the head was appended to it


def test_a_swish_backbone_converts_to_its_own_outputs_alone() -> None:
    """OpenVINO's conversion of Keras's EfficientNet left a Result on every swish activation (52 outputs): the run's
    compiled model joined 2-D and 4-D arrays, and every efficientnet_b0 run that fine-tuned died after training."""
    pytest.importorskip("openvino")
    model = classifier.probabilities_and_features(
        classifier.build_classifier("efficientnet_b0", 2, image_size=32, weights=None)
    )
    converted = runtime.to_openvino(model)
    assert [str(o.get_partial_shape()) for o in converted.outputs] == ["[?,2]", "[?,1280]"]
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    joined = runtime.OpenVINOInference(converted, "fp32", joined=True)(x)
    np.testing.assert_allclose(joined, np.concatenate([np.asarray(t) for t in model(x)], -1), atol=1e-5)


def test_append_head_matches_the_keras_head() -> None:
    import keras

    from floranet.inference import runtime
    from floranet.models import classifier

    keras.utils.set_random_seed(0)
    extractor = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="stand_in")], name="features")
    head = classifier.build_head(6, 4, units=5, dropout=0.3)
    both = runtime.append_head(runtime.to_openvino(extractor), head)
    assert both is not None
    fn = runtime.OpenVINOInference(both, "fp32", joined=True)
    x = np.random.default_rng(0).normal(size=(7, 8)).astype(np.float32)
    out = fn(x)
    feats = np.asarray(extractor(x))
    np.testing.assert_allclose(out[:, :4], np.asarray(head(feats)), atol=1e-5)
    np.testing.assert_allclose(out[:, 4:], feats, atol=1e-5)
    odd = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="tanh")])
    assert runtime.append_head(runtime.to_openvino(extractor), odd) is None  # falls back to a full conversion


def test_openvino_reports_nothing_to_google_analytics_from_floranet(tmp_path) -> None:
    """OpenVINO's converter sent each import and conversion to Google Analytics (openvino_telemetry: consent
    assumed when no opt-out file exists) and wrote a client id under ~/intel, from every floranet command that
    loads it. floranet keeps it off: OpenVINO takes its no-op stub, and nothing is written in HOME."""
    import os
    import subprocess
    import sys

    code = (
        "import floranet, openvino\n"
        "from openvino.tools import ovc\n"
        "import openvino.tools.ovc.telemetry_utils as t\n"
        "print(t.tm.__name__)\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "CI": ""}  # CI=true would turn it off by itself
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "openvino.tools.ovc.telemetry_stub"
    assert not (tmp_path / "intel").exists()
