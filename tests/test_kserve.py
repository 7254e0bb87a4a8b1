"""The Open Inference Protocol (KServe v2) routes of `floranet serve`, driven by Triton's own HTTP client."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from floranet.config import ServeConfig  # noqa: E402
from floranet.data.datasets import mini_flowers_path  # noqa: E402
from floranet.errors import ConfigError  # noqa: E402
from floranet.inference import compiled  # noqa: E402
from floranet.serving import tensors  # noqa: E402
from floranet.serving.uploads import RequestError  # noqa: E402

MODEL = "flowers-v2"  # --model-name of the served run
JPEGS = [sorted((mini_flowers_path() / c).glob("*.jpg"))[0] for c in ("daisy", "roses", "tulips")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_run: Path):
    """`floranet serve RUN --model-name flowers-v2` in a child process; yields its host:port."""
    port = _free_port()
    cmd = [sys.executable, "-m", "floranet.cli", "serve", str(tiny_run), "--port", str(port)]
    cmd += ["--model-name", MODEL, "--runtime", "tensorflow", "--precision", "fp32", "--max-batch", "4"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"floranet serve did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def client(server: str):
    c = httpclient.InferenceServerClient(url=server)
    yield c
    c.close()


def _bytes_input(blobs: list[bytes], binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput("image", [len(blobs)], "BYTES")
    if binary:
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_), binary_data=True)
    else:  # JSON: BYTES elements travel as base64 strings
        inp.set_data_from_numpy(np.array([base64.b64encode(b).decode() for b in blobs], dtype=np.object_), False)
    return inp


def test_liveness_readiness_and_metadata(client, tiny_run: Path) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready(Path(tiny_run).name)  # --model-name replaces the folder's name
    server = client.get_server_metadata()
    assert server["name"] == "floranet" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"][0].endswith("-" + Path(tiny_run).name)
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "image": ("BYTES", [-1]),
        "pixels": ("FP32", [-1, 32, 32, 3]),
    }
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "probabilities": ("FP32", [-1, 3]),
        "labels": ("BYTES", [-1, 3]),
        "ood_score": ("FP32", [-1]),  # the run has an unknown answer (ood.json)
        "unknown": ("BOOL", [-1]),
    }
    assert meta["parameters"]["class_names"] == ["daisy", "roses", "tulips"]
    assert client.is_model_ready(MODEL, model_version=meta["versions"][0])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


def test_a_run_folder_with_url_characters_gives_a_name_and_version_clients_can_address(writable_run: Path) -> None:
    """tritonclient quotes the model name in its URLs but not the version: a run in "my run #1" advertised the
    version "<sha>-my run #1", which every versioned call refused (ValueError: invalid request URI)."""
    from floranet import serving

    folder = writable_run.rename(writable_run.parent / "my run #1")
    app = serving.create_app(folder, runtime="tensorflow", precision="fp32")
    with serving.serve_in_thread(app) as url:
        c = httpclient.InferenceServerClient(url=url.removeprefix("http://").rstrip("/"))
        try:
            version = c.get_model_metadata("my_run__1")["versions"][0]
            assert version == serving.model_version(folder) and version.endswith("-my_run__1")
            assert c.is_model_ready("my_run__1", model_version=version)
            answer = c.infer("my_run__1", [_bytes_input([JPEGS[0].read_bytes()])], model_version=version)
            assert answer.as_numpy("probabilities").shape == (1, 3)
        finally:
            c.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_on_jpeg_bytes_equals_post_predict(client, server: str, binary: bool) -> None:
    blobs = [p.read_bytes() for p in JPEGS]
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("labels", binary_data=binary),
    ]
    result = client.infer(MODEL, [_bytes_input(blobs, binary)], outputs=outputs, request_id="r1")
    probs, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    assert probs.shape == (3, 3) and probs.dtype == np.float32 and labels.shape == (3, 3)
    assert result.get_response()["id"] == "r1" and result.get_response()["model_name"] == MODEL
    for i, blob in enumerate(blobs):
        answer = httpx.post(f"http://{server}/predict", content=blob, timeout=30).json()
        top = [row["class"] for row in answer["top_k"]]
        assert [v.decode() if isinstance(v, bytes) else v for v in labels[i]] == top
        names = ["daisy", "roses", "tulips"]
        for row in answer["top_k"]:
            assert probs[i, names.index(row["class"])] == pytest.approx(row["probability"], abs=1e-5)


def test_decoded_tensors_equal_encoded_images(client, server: str) -> None:
    import tensorflow as tf

    from floranet.data.decode import decode_bytes

    blobs = [p.read_bytes() for p in JPEGS]
    want = client.infer(MODEL, [_bytes_input(blobs)]).as_numpy("probabilities")
    pixels = np.stack([decode_bytes(b, (32, 32))[1] for b in blobs]).astype(np.float32)
    fp32 = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    fp32.set_data_from_numpy(pixels, binary_data=True)
    np.testing.assert_allclose(client.infer(MODEL, [fp32]).as_numpy("probabilities"), want, atol=1e-5)
    fp32_json = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    fp32_json.set_data_from_numpy(pixels, binary_data=False)
    np.testing.assert_allclose(client.infer(MODEL, [fp32_json]).as_numpy("probabilities"), want, atol=1e-5)
    # UINT8: the 0..255 pixels of a plain resize, as a client without floranet would send them.
    u8 = tf.cast(tf.round(tf.image.resize(pixels, (32, 32))), tf.uint8).numpy()
    uint8 = httpclient.InferInput("pixels", list(u8.shape), "UINT8")
    uint8.set_data_from_numpy(u8, binary_data=True)
    got = client.infer(MODEL, [uint8]).as_numpy("probabilities")
    assert got.shape == (3, 3) and np.allclose(got.sum(axis=1), 1, atol=1e-5)


def _checker_png() -> bytes:
    """An image unlike the tiny run's colour classes: answered "unknown"."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.indices((32, 40)).sum(0) % 2 * 255).astype("uint8")[..., None].repeat(3, 2)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_unknown_outputs_equal_post_predict(client, server: str, binary: bool) -> None:
    blobs = [p.read_bytes() for p in JPEGS] + [_checker_png()]
    meta = client.get_model_metadata(MODEL)["parameters"]["unknown"]
    assert meta["method"] == "combined" and isinstance(meta["threshold"], float)
    everything = client.infer(MODEL, [_bytes_input(blobs, binary)])  # no outputs named: all four
    names = [o["name"] for o in everything.get_response()["outputs"]]
    assert names == ["probabilities", "labels", "ood_score", "unknown"]
    scores, unknown = everything.as_numpy("ood_score"), everything.as_numpy("unknown")
    assert scores.shape == unknown.shape == (4,) and scores.dtype == np.float32 and unknown.dtype == np.bool_
    assert unknown[-1] and list(unknown) == [bool(s > meta["threshold"]) for s in scores]
    # One image a call here, four in one batch there: float rounding differs (oneDNN picks kernels by batch
    # size); the score's tolerance is the compiled model's check (1e-3 of max(1, |threshold|)).
    tolerance = compiled.MAX_SCORE_REL_DIFF * max(1.0, abs(meta["threshold"]))
    for i, blob in enumerate(blobs):
        answer = httpx.post(f"http://{server}/predict", content=blob, timeout=30).json()
        assert answer["unknown"] == bool(unknown[i]) and answer["ood_score"] == pytest.approx(scores[i], abs=tolerance)
    asked = [httpclient.InferRequestedOutput("unknown", binary_data=binary)]
    only = client.infer(MODEL, [_bytes_input(blobs, binary)], outputs=asked)
    assert [o["name"] for o in only.get_response()["outputs"]] == ["unknown"]
    np.testing.assert_array_equal(only.as_numpy("unknown"), unknown)
    bad = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(blobs[0]).decode()]}]
    }
    r = _post(server, {**bad, "outputs": [{"name": "ood_score", "parameters": {"classification": 2}}]})
    assert r.status_code == 400 and "has no classification" in r.json()["error"]


def test_without_the_unknown_answer_the_outputs_are_not_offered(tiny_run: Path) -> None:
    from fastapi.testclient import TestClient

    from floranet.serving import create_app

    app = create_app(tiny_run, runtime="tensorflow", precision="fp32", unknown=False, model_name=MODEL)
    with TestClient(app, base_url="http://127.0.0.1") as c:  # a loopback Host (TestClient's default is not)
        meta = c.get(f"/v2/models/{MODEL}").json()
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "labels"]
        assert meta["parameters"]["unknown"] == "off"
        blob = base64.b64encode(JPEGS[0].read_bytes()).decode()
        doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [blob]}]}
        assert [o["name"] for o in c.post(f"/v2/models/{MODEL}/infer", json=doc).json()["outputs"]] == [
            "probabilities",
            "labels",
        ]
        r = c.post(f"/v2/models/{MODEL}/infer", json={**doc, "outputs": [{"name": "unknown"}]})
        assert r.status_code == 400 and "unknown output 'unknown'" in r.json()["error"]


def test_a_parse_past_the_decode_timeout_answers_503(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from floranet.serving import create_app

    app = create_app(tiny_run, runtime="tensorflow", precision="fp32", model_name=MODEL, decode_timeout_s=0.2)
    real = tensors.parse_request
    monkeypatch.setattr(tensors, "parse_request", lambda *a: (time.sleep(0.6), real(*a))[1])  # a slow parse
    doc = {"inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}]}
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post(f"/v2/models/{MODEL}/infer", json=doc)
    assert r.status_code == 503 and "to parse" in r.json()["error"] and r.headers["retry-after"] == "1"
    assert app.state.serve.pending == 0 and app.state.serve.clients == {}


def test_a_refused_image_cancels_the_requests_other_decodes(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image 0 cannot be decoded: the request is answered 415 and its ticket given back at once, so its other
    images, still queued for the decode pool, must never be decoded (they used to run on, counted by nobody)."""
    from fastapi.testclient import TestClient

    from floranet.serving import create_app
    from floranet.serving import state as serve_state

    app = create_app(tiny_run, runtime="tensorflow", precision="fp32", model_name=MODEL)
    calls: list[str] = []
    real = serve_state.decode.decode_bytes

    def slow_decode(data: bytes, *args: object, **kwargs: object) -> object:
        calls.append(str(kwargs.get("name")))
        if data != b"not an image":
            time.sleep(0.2)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(serve_state.decode, "decode_bytes", slow_decode)
    blobs = [b"not an image"] + [p.read_bytes() for p in JPEGS] * 3
    data = [base64.b64encode(b).decode() for b in blobs]
    doc = {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post(f"/v2/models/{MODEL}/infer", json=doc)
        assert r.status_code == 415 and "'image 0'" in r.json()["error"], r.text
        time.sleep(0.2 * len(blobs))  # long enough for every decode, had they been left to run
    assert calls[0] == "image 0" and len(calls) <= 1 + app.state.serve.decode_pool.workers, calls
    assert app.state.serve.pending == 0 and app.state.serve.clients == {}


def test_classification_extension_and_binary_output(client) -> None:
    blobs = [JPEGS[1].read_bytes()]
    out = httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=2)
    result = client.infer(MODEL, [_bytes_input(blobs)], outputs=[out])
    (row,) = result.as_numpy("probabilities")
    value, index, label = row[0].decode().split(":")
    probs = client.infer(MODEL, [_bytes_input(blobs)]).as_numpy("probabilities")[0]
    assert int(index) == int(np.argmax(probs)) and label == ["daisy", "roses", "tulips"][int(index)]
    assert float(value) == pytest.approx(float(probs.max()), abs=1e-5)


def _post(server: str, doc: dict, binary: bytes = b"", path: str = f"/v2/models/{MODEL}/infer") -> httpx.Response:
    body = json.dumps(doc).encode()
    headers = {"Inference-Header-Content-Length": str(len(body))} if binary else {}
    return httpx.post(f"http://{server}{path}", content=body + binary, headers=headers, timeout=30)


BAD = {
    "not json": ({}, b"", "not valid JSON"),
    "no inputs": ({"inputs": []}, b"", "'inputs' must be a list"),
    "two inputs": (
        {"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}] * 2},
        b"",
        "exactly one input",
    ),
    "unknown input": ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}, b"", "unknown"),
    "bad dtype": (
        {"inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "FP64", "data": [0]}]},
        b"",
        "datatype",
    ),
    "wrong size": (
        {"inputs": [{"name": "pixels", "shape": [1, 16, 16, 3], "datatype": "UINT8", "data": [0] * 768}]},
        b"",
        "32, 32, 3",
    ),
    "count vs data": (
        {"inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [1, 2]}]},
        b"",
        "elements",
    ),
    "huge shape": (
        {"inputs": [{"name": "pixels", "shape": [1, 10**9, 32, 3], "datatype": "UINT8", "data": [1]}]},  # one image
        b"",
        "elements",
    ),
    "binary size lies": (
        {
            "inputs": [
                {"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}
            ]
        },
        b"\0" * 12,
        "need 12,288 bytes",
    ),
    "binary left over": (
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 3072},
                }
            ]
        },
        b"\0" * 3080,
        "add up to",
    ),
    "bytes length lies": (
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]},
        struct.pack("<I", 999) + b"abcd",
        "declares 999",
    ),
    "not base64": ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, b"", "base64"),
    "unknown output": (
        {
            "inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}],
            "outputs": [{"name": "logits"}],
        },
        b"",
        "unknown output 'logits'",
    ),
    "binary_data not a bool": (
        {
            "inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": "false"}}],
        },
        b"",
        "binary_data must be true or false",
    ),
    "classification of labels": (
        {
            "inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}],
            "outputs": [{"name": "labels", "parameters": {"classification": 2}}],
        },
        b"",
        "'labels' has no classification",
    ),
    "pixels as BYTES": (  # its 3,072 elements were counted as images first: a 413
        {"inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "BYTES", "data": ["AA=="] * 3072}]},
        b"",
        "input 'pixels' must be FP32 or UINT8. Received: BYTES",
    ),
    "an int past 64 bits": (  # a number, out of range: it was refused as "FP32 data must hold numbers"
        {"inputs": [{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": [1] * 3071 + [10**20]}]},
        b"",
        "image 0 has values outside [0, 255]",
    ),
    "tiny image": (
        {"inputs": [{"name": "pixels", "shape": [1, 1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
        b"",
        "32, 32, 3",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_400_with_a_reason(server: str, case: str) -> None:
    doc, binary, match = BAD[case]
    if case == "not json":
        r = httpx.post(f"http://{server}/v2/models/{MODEL}/infer", content=b"{nope", timeout=30)
    else:
        r = _post(server, doc, binary)
    assert r.status_code == 400, r.text
    assert match in r.json()["error"]


def test_unusable_images_and_limits_map_like_predict(server: str) -> None:
    doc = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"hello").decode()]}]
    }
    r = _post(server, doc)
    assert r.status_code == 415 and "image 0" in r.json()["error"]
    rose = sorted((mini_flowers_path() / "roses").glob("*.jpg"))[0].read_bytes()
    cut = base64.b64encode(rose[: len(rose) // 2] + b"\xff\xd9").decode()  # decoded without a word by Pillow
    r = _post(server, {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [cut]}]})
    assert r.status_code == 422 and "corrupt JPEG data: premature end of data segment" in r.json()["error"], r.text
    pixels = np.full((1, 32, 32, 3), 300.0, np.float32)
    doc = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [1, 32, 32, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": pixels.nbytes},
            }
        ]
    }
    r = _post(server, doc, pixels.tobytes())
    assert r.status_code == 400 and "outside [0, 255]" in r.json()["error"]
    too_many = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [5, 32, 32, 3],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": 5 * 3072},
            }
        ]
    }
    r = _post(server, too_many, b"\1" * (5 * 3072))
    assert r.status_code == 413 and "limit is 4" in r.json()["error"]  # a quarter of 4 x --max-batch 4
    numbers = {"inputs": [{"name": "pixels", "shape": [5000, 32, 32, 3], "datatype": "UINT8", "data": [0] * 20000}]}
    r = _post(server, numbers)  # more numbers than 4 images hold: refused before the JSON is parsed
    assert r.status_code == 413 and "values" in r.json()["error"], r.text
    nested = b'{"x":[' + b",".join([b"[" * 100 + b"]" * 100] * 60) + b"]}"  # 6,002 lists, 59 commas: refused unparsed
    r = httpx.post(f"http://{server}/v2/models/{MODEL}/infer", content=nested, timeout=30)
    assert r.status_code == 413 and "6,002 lists and objects; the limit is 5,252 " in r.json()["error"], r.text
    deep = httpx.post(f"http://{server}/v2/models/{MODEL}/infer", content=b"[" * 5_000, timeout=30)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # a declared 1 GB body: refused unread
        sock.sendall(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {10**9}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    gz = httpx.post(f"http://{server}/v2/models/{MODEL}/infer", content=b"{}", headers={"Content-Encoding": "gzip"})
    assert gz.status_code == 415
    assert httpx.get(f"http://{server}/v2/models/{MODEL}/versions/nope").status_code == 404
    assert httpx.get(f"http://{server}/health").json()["status"] == "ok"  # the server goes on


def test_more_images_than_a_share_are_refused_before_any_element_is_read(server: str) -> None:
    """5 million empty BYTES elements were all read (seconds of a decode thread) before the 413: the declared
    shape is checked first now, so elements that are not even well formed get the same 413, not a parse error."""
    lying = {"name": "image", "shape": [5_000_000], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}
    cases = [
        ({"inputs": [lying]}, b"\xff" * 8),  # binary: each length says 4 GB
        ({"inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": ["%%%"] * 5}]}, b""),  # not base64
        ({"inputs": [{"name": "image", "shape": [1, 5], "datatype": "BYTES", "data": [["%%%"] * 5]}]}, b""),
        ({"inputs": [{**lying, "name": "pixels", "shape": [5, 32, 32, 3], "datatype": "FP32"}]}, b"\0" * 8),
    ]
    for doc, binary in cases:
        r = _post(server, doc, binary)
        assert r.status_code == 413, r.text
        assert r.json()["error"].endswith("images in one request; the limit is 4 (one client's share)"), r.text
    head = json.dumps({"inputs": [lying]}).encode()
    with pytest.raises(RequestError, match="^5,000,000 images in one request; the limit is 4 ") as e:
        tensors.parse_request(head + b"\xff" * 8, str(len(head)), max_images=4)
    assert e.value.status == 413
    with pytest.raises(RequestError, match="BYTES elements cannot fit"):  # without the bound: read as before
        tensors.parse_request(head + b"\xff" * 8, str(len(head)))


def test_codec_round_trip_and_limits() -> None:
    probs = np.array([[0.25, 0.75]], np.float32)
    outs = [
        tensors.OutputTensor("probabilities", "FP32", (1, 2), probs, binary=True),
        tensors.OutputTensor("labels", "BYTES", (1, 2), ["b", "a"], binary=True),
        tensors.OutputTensor("unknown", "BOOL", (2,), np.array([True, False]), binary=False),
    ]
    body, json_length = tensors.encode_response({"model_name": "m"}, outs)
    assert json_length is not None
    doc = json.loads(body[:json_length])
    blob = body[json_length:]
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(blob[:8], "<f4"), probs.ravel())
    assert blob[8:] == struct.pack("<I", 1) + b"b" + struct.pack("<I", 1) + b"a"
    assert doc["outputs"][2] == {"name": "unknown", "datatype": "BOOL", "shape": [2], "data": [True, False]}
    body, json_length = tensors.encode_response({}, [tensors.OutputTensor("u", "BOOL", (2,), [False, True], True)])
    assert json_length is not None and body[json_length:] == b"\x00\x01"  # one byte per element
    req = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}}]}
    head = json.dumps(req).encode()
    parsed = tensors.parse_request(head + struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0), str(len(head)))
    assert parsed.inputs[0].data == [b"abc", b""]
    for header in ("0", "-1", "abc", str(len(head) + 100), "9" * 5000):
        with pytest.raises(RequestError, match="Inference-Header-Content-Length"):
            tensors.parse_request(head, header)
    for header in ("1_0", " 2 ", "+2", "\u0662"):  # int() took these (as 10, 2, 2 and 2)
        with pytest.raises(RequestError, match="Inference-Header-Content-Length must be ASCII digits"):
            tensors.parse_request(b"{}" + b"x" * 10, header)
    two = head + struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)
    assert tensors.parse_request(two, "0" + str(len(head))).inputs[0].data == [b"abc", b""]  # leading zeros: fine
    nested = {"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "UINT8", "data": [[1, 2]]}]}
    assert tensors.parse_request(json.dumps(nested).encode(), None).inputs[0].data.tolist() == [1, 2]
    for data in ([[1], [2]], [1, 256], [1.5, 2], ["1", "2"], [None, 1]):
        bad = {"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "UINT8", "data": data}]}
        with pytest.raises(RequestError):
            tensors.parse_request(json.dumps(bad).encode(), None)


def test_model_name_is_checked() -> None:
    assert ServeConfig(model_name="flowers-v2.1").model_name == "flowers-v2.1"
    for bad in ("", "a/b", "-x", "x" * 200, 3):
        with pytest.raises(ConfigError, match="model_name"):
            ServeConfig(model_name=bad)


def test_an_outputs_own_binary_data_wins_over_the_requests_default(server: str) -> None:
    """Triton's rule: binary_data_output is the default for outputs that do not say; one that says
    binary_data: false comes back as JSON (it used to be sent as binary data all the same)."""
    blob = base64.b64encode(JPEGS[0].read_bytes()).decode()
    doc = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [blob]}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "labels", "parameters": {"binary_data": False}}, {"name": "probabilities"}],
    }
    r = _post(server, doc)
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    labels, probs = json.loads(r.content[:length])["outputs"]
    assert "data" in labels and "binary_data_size" not in labels.get("parameters", {})
    assert "data" not in probs and probs["parameters"]["binary_data_size"] == 3 * 4
    assert len(r.content) == length + 3 * 4
