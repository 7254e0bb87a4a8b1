"""The REST server: same answers as predict_bytes, dynamic batching, hostile inputs, slow clients."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from corpus import fake_heic, raw_png  # noqa: E402

with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2; httpx works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from floranet import inference as predict  # noqa: E402
from floranet import serving as serve  # noqa: E402
from floranet.data.datasets import mini_flowers_path  # noqa: E402
from floranet.errors import ConfigError, ModelError  # noqa: E402
from floranet.rundir import RunDir  # noqa: E402
from floranet.serving import uploads  # noqa: E402

ROSES = mini_flowers_path() / "roses"
TIMEOUT_S = 1.5  # request_timeout_s of the shared app: small, for the slow-client test
LOCAL = "http://127.0.0.1"  # a Host the server answers on loopback (TestClient's default, testserver, is not)


def _rose() -> tuple[str, bytes]:
    path = sorted(ROSES.glob("*.jpg"))[0]
    return path.name, path.read_bytes()


def _png(seed: int = 1, size: tuple[int, int] = (45, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def app(tiny_run):
    # TensorFlow fp32, so answers can be compared with predict_bytes to 1e-5 whatever the batch;
    # the automatic runtime has its own test below.
    return serve.create_app(
        tiny_run, request_timeout_s=TIMEOUT_S, max_wait_ms=5.0, runtime="tensorflow", precision="fp32"
    )


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return predict.load(tiny_run, runtime="tensorflow", precision="fp32")


def _assert_same(answer: dict, expected: predict.Prediction) -> None:
    got = {row["class"]: row["probability"] for row in answer["top_k"]}
    want = dict(expected.top_k)
    assert got.keys() == want.keys()
    for name, p in want.items():
        assert got[name] == pytest.approx(p, abs=1e-5)
    assert answer["low_confidence"] == expected.low_confidence


def test_auto_runtime_server_agrees_with_the_same_runtime_offline(tiny_run) -> None:
    pytest.importorskip("openvino")
    auto = serve.create_app(tiny_run)
    offline = predict.load(tiny_run)
    choice = offline.select(None)  # what a server picks: the fastest installed runtime
    name, rose = _rose()
    expected = offline.predict_bytes(rose, name=name)
    with TestClient(auto, base_url=LOCAL) as c:
        assert c.get("/health").json()["runtime"] == f"{choice.runtime} {choice.precision}"
        answer = c.post("/predict", content=rose).json()
    assert answer["top_k"][0]["class"] == expected.top_k[0][0]
    assert answer["top_k"][0]["probability"] == pytest.approx(expected.top_k[0][1], abs=1e-4)


def test_a_class_folder_name_that_is_not_utf8_is_answered_escaped(writable_run: Path, tmp_path: Path) -> None:
    """Class names keep a folder's undecodable bytes; JSON must be UTF-8, so they are sent as \\xNN."""
    import json
    import os

    raw = b'["caf\xe9", "roses", "tulips"]'  # written by a run on a Latin-1 folder name
    (writable_run / "class_names.json").write_bytes(raw)
    latin = Path(os.fsdecode(os.fsencode(tmp_path) + b"/run-\xe9"))
    writable_run.rename(latin)
    app = serve.create_app(latin, runtime="tensorflow", precision="fp32")
    _, rose = _rose()
    infer = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(rose).decode()]}]
    }
    infer["outputs"] = [{"name": "labels"}, {"name": "probabilities", "parameters": {"classification": 3}}]
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/classes").json() == ["caf\\xe9", "roses", "tulips"]
        assert c.get("/health").json()["model_version"].endswith("-run-_")  # a URL-safe version
        answer = c.post("/predict", content=rose)
        assert answer.status_code == 200
        assert {t["class"] for t in answer.json()["top_k"]} == {"caf\\xe9", "roses", "tulips"}
        meta = c.get("/v2/models/run-_")
        assert meta.status_code == 200 and meta.json()["parameters"]["class_names"][0] == "caf\\xe9"
        out = c.post("/v2/models/run-_/infer", json=infer)
        assert out.status_code == 200, out.text
        assert "caf\\xe9" in json.loads(out.content)["outputs"][0]["data"]


def test_health_classes_and_page(client, tiny_run) -> None:
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    assert h.json()["model_version"] == serve.model_version(tiny_run) == client.get("/health").json()["model_version"]
    assert h.json()["model_version"].endswith("-" + Path(tiny_run).name)
    assert client.get("/classes").json() == ["daisy", "roses", "tulips"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "gradcam" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained
    assert "default-src 'none'" in page.headers["content-security-policy"]
    missing = client.get("/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_page_escapes_what_the_cli_and_report_escape() -> None:
    """The page set class and file names with textContent as they came: a class "abc\u202egpj.exe" showed as
    "abcexe.jpg". Its escape now covers exactly the characters printable escapes, spelled as it spells them, and
    the script it joined is still the one the Content-Security-Policy's hash allows."""
    import base64
    import hashlib
    import json
    import re
    import subprocess

    from floranet.serving import page
    from floranet.utils.text import printable

    found = re.search(r"const unsafe = /(\[[^\]]*\])/g;", page.SCRIPT)
    assert found, "the page's escape is gone"
    js_class = re.compile(found.group(1))  # \uNNNN escapes and ranges read the same in Python and JavaScript
    for code in range(0x110000):
        if not 0xD800 <= code <= 0xDFFF:  # surrogates: printable's bytes that are not UTF-8, never in a JSON answer
            assert bool(js_class.fullmatch(chr(code))) == (printable(chr(code)) != chr(code)), hex(code)
    script = re.search(r"<script>(.*)</script>", page.PAGE, re.S)
    assert script and script.group(1) == page.SCRIPT
    digest = base64.b64encode(hashlib.sha256(page.SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page.HEADERS["Content-Security-Policy"]
    node = shutil.which("node")
    if node is None:
        return
    names = ["abc\u202egpj.exe", "a\nb\x1b[31m\x7f\x85\u061c\u200f\u2028\u2069.jpg", "caf\u00e9 \u2192 \U0001f33b"]
    run = f"{page.SHOWN}\nprocess.stdout.write(JSON.stringify({json.dumps(names)}.map(shown)));"
    out = subprocess.run([node, "-e", run], capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out) == [printable(n) for n in names] == ["abc\\u202egpj.exe", *json.loads(out)[1:]]


def _css_rules(css: str) -> dict[str, dict[str, str]]:
    """Selector -> declarations of a flat style sheet (an @media block's inner rule is read as its own)."""
    import re

    rules: dict[str, dict[str, str]] = {}
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        pairs = (d.split(":", 1) for d in body.split(";") if ":" in d)
        rules.setdefault(selector.strip(), {}).update({k.strip(): v.strip() for k, v in pairs})
    return rules


def _rgb(colour: str) -> tuple[float, ...]:
    """``#rgb`` or ``#rrggbb`` as 0..1 channels."""
    hex_ = colour.lstrip("#")
    hex_ = "".join(c * 2 for c in hex_) if len(hex_) == 3 else hex_
    return tuple(int(hex_[i : i + 2], 16) / 255 for i in (0, 2, 4))


def _contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """WCAG 2's contrast ratio of two sRGB colours."""

    def luminance(rgb: tuple[float, ...]) -> float:
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_pages_bars_and_header_text_have_wcag_contrast(client) -> None:
    """Unknown bars (#b0b8b3) and the other classes' bars (#66bb6a) on their track were 1.70:1 and 1.98:1 (WCAG
    1.4.11 asks 3:1 of graphics), and the header's 12 px model version, white at opacity .85 on the accent green,
    4.21:1 (1.4.3 asks 4.5:1 of text)."""
    import re

    css = re.search(r"<style>(.*?)</style>", client.get("/").text, re.S).group(1)
    rules = _css_rules(css)
    colours = {k: v for k, v in rules[":root"].items() if k.startswith("--")}

    def colour(value: str) -> tuple[float, ...]:
        return _rgb(re.sub(r"var\((--[\w-]+)\)", lambda m: colours[m.group(1)], value))

    track = colour(rules[".track"]["background"])
    unknown = colour(rules["#results.unknown .fill, #results.unknown li:first-child .fill"]["background"])
    assert _contrast(unknown, track) >= 3
    ordinary = colour(rules[".fill"]["background"])  # the other classes' bars (#66bb6a: 1.98:1)
    assert _contrast(ordinary, track) >= 3
    small, header = rules["header small"], rules["header"]
    alpha = float(small.get("opacity", "1"))
    background = colour(header["background"])
    text = tuple(alpha * t + (1 - alpha) * b for t, b in zip(colour(header["color"]), background, strict=True))
    assert float(small["font-size"].removesuffix("px")) < 18.66  # small text: 4.5:1, not 3:1
    assert _contrast(text, background) >= 4.5


def test_predict_multipart_and_raw_equal_predict_bytes(client, predictor, tiny_run) -> None:
    name, rose = _rose()
    png = _png()
    for label, data in ((name, rose), ("noise.png", png)):
        expected = predictor.predict_bytes(data, name=label, top_k=3)
        multi = client.post("/predict", files={"file": (label, data, "image/jpeg")})
        assert multi.status_code == 200, multi.text
        body = multi.json()
        assert body["file"] == label
        _assert_same(body, expected)
        assert body["model_version"] == serve.model_version(tiny_run)
        assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total"}
        assert all(v >= 0 for v in body["timing_ms"].values())
        raw = client.post("/predict", content=data, headers={"content-type": "application/octet-stream"})
        assert raw.status_code == 200, raw.text
        _assert_same(raw.json(), expected)
    # the model version is the same for a second app on the same run
    assert serve.create_app(tiny_run).state.model_version == body["model_version"]


def test_upload_name_is_only_a_label(client) -> None:
    _, rose = _rose()
    for sent, shown in (("../../etc/passwd.jpg", "passwd.jpg"), ("C:\\Users\\me\\rose.jpg", "rose.jpg")):
        r = client.post("/predict", files={"file": (sent, rose, "image/jpeg")})
        assert r.status_code == 200 and r.json()["file"] == shown
    assert uploads._label("/tmp/a\x07b\n.jpg") == "ab.jpg" and uploads._label("") == "upload"
    assert len(uploads._label("x" * 5000)) == 200


def test_a_browsers_percent_encoded_quote_and_line_breaks_are_decoded_in_the_label(client) -> None:
    """Browsers send a file name's ", CR and LF as %22, %0D and %0A (WHATWG), and the answer echoed
    'say %22hi%22.jpg'. Those three are decoded, nothing else is (a "%" is sent as it is), and the line breaks are
    then dropped as every unprintable character is."""
    _, rose = _rose()
    for sent, shown in (
        ("say %22hi%22.jpg", 'say "hi".jpg'),
        ("a%0D%0Ab.jpg", "ab.jpg"),
        ("100%25 %2522 %20.jpg", "100%25 %2522 %20.jpg"),
        ("dir%22/x%22.jpg", 'x".jpg'),
    ):
        body = (
            b"--b\r\n"
            + f'Content-Disposition: form-data; name="file"; filename="{sent}"\r\n'.encode()
            + b"Content-Type: image/jpeg\r\n\r\n"
            + rose
            + b"\r\n--b--\r\n"
        )
        r = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 200 and r.json()["file"] == shown, (sent, r.text)
    assert uploads._label("%0a%22.jpg") == '%0a".jpg'  # upper-case hex only, as browsers send it


def test_a_plain_filename_field_is_the_name_as_it_is(client) -> None:
    """A photo named 100%22.jpg came back from the page as 100".jpg: in a file part's header a browser sends '"' as
    %22 and a '%' as it is, so the two names arrive alike. The page also sends the name as a plain field."""
    _, rose = _rose()

    def post(*fields: tuple[str, str]) -> str:
        plain = b"".join(
            b"--b\r\n" + f'Content-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
            for k, v in fields
        )
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="100%22.jpg"\r\n\r\n'
        r = client.post(
            "/predict",
            content=head + rose + b"\r\n" + plain + b"--b--\r\n",
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["file"])

    assert post(("filename", "100%22.jpg")) == "100%22.jpg"
    assert post(("filename", 'say "hi"\r\n.jpg')) == 'say "hi".jpg'  # printable, as every label
    assert post() == '100".jpg'  # a client that sends no field: the header's name, decoded as browsers encode it
    assert post(("filename", "a.jpg"), ("filename", "b.jpg")) == '100".jpg'  # two: neither is the name


def test_gradcam_png_is_a_decodable_overlay_sized_as_explain_sizes_it(client) -> None:
    """serve shrank a large photo to 384 px but never enlarged a small one, while explain (whose README says it
    draws "as serve draws it") scales a tiny photo up to 192 px: one sizing now, utils.figures.shown_photo."""
    name, rose = _rose()
    r = client.post("/predict?gradcam=1", files={"file": (name, rose, "image/jpeg")})
    assert r.status_code == 200, r.text
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["gradcam_png"])))
    assert overlay.format == "PNG" and overlay.mode == "RGB"
    assert Image.open(io.BytesIO(rose)).size == (160, 107) and overlay.size == (192, 128)  # a small photo: up
    assert r.json()["gradcam_note"] is None  # ResNet-20's 8x8 map, with evidence: nothing to say
    for sent, drawn in (((45, 30), (192, 128)), ((900, 600), (384, 256)), ((300, 200), (300, 200))):
        r = client.post("/predict?gradcam=1", content=_png(size=sent))
        assert Image.open(io.BytesIO(base64.b64decode(r.json()["gradcam_png"]))).size == drawn, sent
    assert "gradcam_png" not in client.post("/predict", content=rose).json()


def test_a_flat_gradcam_tint_comes_with_a_note_saying_why(writable_run) -> None:
    """explain warns when every map is uniform (a 1x1 feature map) and captions a blank one (no positive evidence),
    but /predict?gradcam=1 sent the flat tint without a word, as if it were an answer. gradcam_note says why."""
    from floranet.models import classifier
    from modelfiles import blank_head

    blank_head(writable_run)  # every map is all zero
    name, rose = _rose()
    with TestClient(serve.create_app(writable_run, runtime="tensorflow", precision="fp32"), base_url=LOCAL) as c:
        answer = c.post("/predict?gradcam=1", content=rose).json()
    top = answer["top_k"][0]["class"]
    assert answer["gradcam_png"] and answer["gradcam_note"] == f"no positive evidence for {top}: the map is blank"
    one_cell = classifier.build_classifier("mobilenet_v2", 3, image_size=32, weights=None)  # a 1x1 map
    RunDir(writable_run).save_model(one_cell)
    other = serve.create_app(writable_run, runtime="tensorflow", precision="fp32", unknown=False)  # other features
    with TestClient(other, base_url=LOCAL) as c:
        answer = c.post("/predict?gradcam=1", content=rose).json()
    assert answer["gradcam_png"], answer
    assert "is 1x1 at this model's 32x32 input: every map is uniform" in answer["gradcam_note"], answer


def test_a_gradcam_value_that_is_neither_true_nor_false_is_refused_by_name(client) -> None:
    """?gradcam=2 (or any value not true or false) was silently taken as no: the client asked for an overlay and got
    none, without a word. Now it is a 400 naming the parameter, the accepted values and the value sent."""
    _, rose = _rose()
    for value in ("2", "maybe", "tru"):
        r = client.post(f"/predict?gradcam={value}", content=rose)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (
            f"gradcam must be one of 1, true, yes, on, 0, false, no, off. Received: gradcam={value!r}"
        )
    for value, overlay in (("TRUE", True), ("on", True), ("0", False), ("off", False), ("", False)):
        r = client.post(f"/predict?gradcam={value}", content=rose)
        assert r.status_code == 200 and ("gradcam_png" in r.json()) == overlay, (value, r.text)


def test_concurrent_requests_are_batched_and_answers_not_mixed_up(tiny_run, predictor) -> None:
    app = serve.create_app(tiny_run, max_batch=8, max_wait_ms=100.0, runtime="tensorflow", precision="fp32")
    images = [_png(seed) for seed in range(8)]
    expected = [predictor.predict_bytes(d, top_k=3) for d in images]
    with serve.serve_in_thread(app) as url:

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/predict", content=d) for d in images))

        answers = asyncio.run(go())
    assert [a.status_code for a in answers] == [200] * 8
    for a, e in zip(answers, expected, strict=True):
        _assert_same(a.json(), e)
    assert max(int(a.headers["x-batch-size"]) for a in answers) > 1
    assert app.state.batcher.stats.images == 8 and app.state.batcher.stats.batches < 8


def test_batcher_groups_up_to_max_batch_and_keeps_order() -> None:
    sizes = []

    def infer(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return x.reshape(len(x), -1)[:, :1] * np.ones((1, 3), np.float32)

    async def go() -> list:
        batcher = serve.Batcher(infer, max_batch=4, max_wait_s=0.05)
        try:
            return await asyncio.gather(*(batcher.submit(np.full((2, 2, 3), i, np.float32)) for i in range(10)))
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    assert [float(r[0][0]) for r in results] == list(range(10))
    assert sum(sizes) == 10 and max(sizes) == 4 and len(sizes) == 3


def test_a_batch_takes_the_waiting_clients_in_turn() -> None:
    """Batches were filled in arrival order: a client with a batch or two of images waiting made another's one
    image wait for all of them (resnet50: p50 1,849 ms instead of 88 ms idle). Now each batch takes one image per
    waiting client in turn, so the other's image rides in the next batch."""
    entered, gate, batches = threading.Event(), threading.Event(), []

    def infer(x: np.ndarray) -> np.ndarray:
        entered.set()
        assert gate.wait(30)  # the first batch holds the model while the others queue up
        batches.append([int(v) for v in x[:, 0, 0, 0]])
        return x.reshape(len(x), -1)[:, :1] * np.ones((1, 3), np.float32)

    def image(i: int) -> np.ndarray:
        return np.full((2, 2, 3), i, np.float32)

    async def go() -> list:
        batcher = serve.Batcher(infer, max_batch=4, max_wait_s=0.0)
        try:
            first = asyncio.ensure_future(batcher.submit(image(0), "a"))
            await asyncio.to_thread(entered.wait, 30)
            many = [asyncio.ensure_future(batcher.submit(image(i), "a")) for i in range(1, 9)]  # two batches' worth
            one = asyncio.ensure_future(batcher.submit(image(100), "b"))
            await asyncio.sleep(0)  # all nine queued
            assert (batcher.queued(), batcher.queued("a"), batcher.queued("b")) == (9, 8, 1)
            gate.set()
            return await asyncio.gather(first, *many, one)
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    assert [int(r[0][0]) for r in results] == [*range(9), 100]  # each request gets its own image's answer
    assert batches == [[0], [1, 100, 2, 3], [4, 5, 6, 7], [8]], batches  # in arrival order 100 came last


def _hostile_cases() -> dict[str, tuple[dict, int, str]]:
    _, rose = _rose()
    text = b"this is a shopping list, not a photo\n" * 20
    heic = fake_heic()
    return {
        "zero bytes": ({"content": b""}, 400, "empty"),
        "zero-byte file field": ({"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "empty"),
        "text file": ({"files": {"file": ("notes.txt", text, "text/plain")}}, 415, "not a supported image"),
        "text sent as image/jpeg": (
            {"content": text, "headers": {"content-type": "image/jpeg"}},
            415,
            "not a supported image",
        ),
        "text named .jpg in multipart": (
            {"files": {"file": ("photo.jpg", text, "image/jpeg")}},
            415,
            "not a supported image",
        ),
        "truncated jpeg": (
            {"content": rose[: len(rose) // 2], "headers": {"content-type": "image/jpeg"}},
            422,
            "truncated",
        ),
        # Pillow decodes it without a word, to grey pixels; the doctor (and so training) leaves it out.
        "jpeg cut mid-file, ended by an end-of-image marker": (
            {"content": rose[: len(rose) // 2] + b"\xff\xd9"},
            422,
            "is corrupt JPEG data: premature end of data segment",
        ),
        "heic": ({"content": heic}, 415, "HEIC"),
        "jpeg of 150 scans": (
            {"content": rose[:-2] + rose[rose.rindex(b"\xff\xda") : -2] * 150 + b"\xff\xd9"},
            422,
            "scans, more than the 100 accepted",
        ),
        "png bomb 20000x20000": (
            {"content": raw_png(20000, 20000, 1, 0, b"\0" * 64)},
            413,
            "20000x20000 = 400.0 MP exceeds the limit of 16.0 MP (max_pixels); send a smaller image",
        ),
        "30 MB upload": ({"content": b"\xff\xd8\xff" + bytes(30 * 1024 * 1024)}, 413, "too large"),
        "30 MB without Content-Length": ({"content": (bytes(1 << 20) for _ in range(30))}, 413, "too large"),
        "multipart without a file field": ({"files": {"photo": ("a.jpg", rose, "image/jpeg")}}, 400, "'file'"),
        "multipart of three photos": (
            {"files": [("file", (f"{i}.jpg", rose, "image/jpeg")) for i in range(3)]},
            400,
            "3 'file' fields; /predict takes one image",
        ),
        "malformed multipart": (
            {
                "content": b"--xyz\r\nnot a header line\r\n\r\n",
                "headers": {"content-type": "multipart/form-data; boundary=xyz"},
            },
            400,
            "multipart",
        ),
        "bad Content-Length": ({"content": b"abc", "headers": {"content-length": "many"}}, 400, "Content-Length"),
        "multipart cut short": (
            {
                "content": b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + rose,
                "headers": {"content-type": "multipart/form-data; boundary=xyz"},
            },
            400,
            "no closing boundary",
        ),
    }


@pytest.mark.parametrize("case", list(_hostile_cases()))
def test_hostile_inputs_get_a_clear_4xx_and_the_server_goes_on(client, case) -> None:
    kwargs, status, words = _hostile_cases()[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, (case, r.status_code, r.text)
    message = r.json()["error"]
    assert words.lower() in message.lower(), message
    assert "raise max_pixels" not in message  # the local user's hint: a client cannot change the server's limits
    assert client.get("/health").json()["status"] == "ok"


def test_wrong_content_type_is_judged_by_content(client, predictor) -> None:
    name, rose = _rose()
    expected = predictor.predict_bytes(rose, top_k=3)
    for ctype in ("text/plain", "application/json", "image/png"):
        r = client.post("/predict", content=rose, headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        _assert_same(r.json(), expected)
    r = client.post("/predict", files={"file": ("x.txt", rose, "text/plain")})
    assert r.status_code == 200
    _assert_same(r.json(), expected)


def test_memory_stays_bounded_under_hostile_requests(client) -> None:
    cases = _hostile_cases()
    client.post("/predict", **cases["30 MB upload"][0])  # warm the allocator once
    before = _rss_mib()
    for _ in range(3):
        for case, (kwargs, status, _) in _hostile_cases().items():
            if case != "bad Content-Length":
                assert client.post("/predict", **kwargs).status_code == status, case
    grown = _rss_mib() - before
    assert grown < 200, f"RSS grew by {grown:.0f} MiB"
    assert client.get("/health").status_code == 200


def _drip(sock: socket.socket, stop: threading.Event) -> None:
    import select

    with __import__("contextlib").suppress(OSError):
        while not stop.is_set():
            if select.select([sock], [], [], 0)[0]:
                # The server answered (408) and closes: bytes sent now would draw a reset that can
                # discard the answer before the test reads it.
                return
            sock.sendall(b"\xff")
            stop.wait(0.1)


def test_slow_clients_do_not_stall_others_and_time_out(app) -> None:
    _, rose = _rose()
    with serve.serve_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=30) as c:  # the model's first call (tracing) is not what is timed
            assert c.post("/predict", content=rose).status_code == 200
        port = int(url.rsplit(":", 1)[1])
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: 100000\r\n\r\n"
        ).encode()
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled.sendall(head + b"\xff\xd8")  # then nothing
        dripping = socket.create_connection(("127.0.0.1", port), timeout=10)
        dripping.sendall(head)
        stop = threading.Event()
        dripper = threading.Thread(target=_drip, args=(dripping, stop), daemon=True)
        dripper.start()
        started = time.monotonic()
        try:
            with httpx.Client(base_url=url, timeout=10) as c:
                for _ in range(3):
                    t = time.monotonic()
                    assert c.get("/health").status_code == 200
                    r = c.post("/predict", content=rose)
                    assert r.status_code == 200
                    assert time.monotonic() - t < 1.0  # not held up by the slow clients
            assert time.monotonic() - started < TIMEOUT_S  # all of that happened while they were still sending
            for sock in (stalled, dripping):
                answer = b""
                while chunk := sock.recv(65536):  # the server closes the connection after its answer
                    answer += chunk
                answer = answer.decode("latin-1")
                assert answer.startswith("HTTP/1.1 408"), answer[:200]
                assert "not received within" in answer
            assert time.monotonic() - started < TIMEOUT_S + 3
        finally:
            stop.set()
            stalled.close()
            dripping.close()
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/health").json()["status"] == "ok"


def test_overload_answers_503_with_retry_after(tiny_run) -> None:
    # The whole server's bound (no per-client share): one client may fill it.
    app = serve.create_app(tiny_run, max_batch=1, max_wait_ms=0.0, client_share=1.0)
    real = app.state.batcher._infer
    app.state.batcher._infer = lambda x: (time.sleep(0.2), real(x))[1]  # a slow model
    images = [_png(seed) for seed in range(12)]
    with serve.serve_in_thread(app) as url:

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/predict", content=d) for d in images))

        answers = asyncio.run(go())
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) >= 4 and 503 in codes, codes
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]


def test_a_busy_client_gets_its_share_and_the_others_still_get_in(tiny_run) -> None:
    """One address floods the server: it holds at most its share (2 of 8 slots) and the rest get 503 naming the
    client's share, while another address's photo is answered as usual (both behind a proxy on this machine)."""
    app = serve.create_app(tiny_run, max_batch=2, max_wait_ms=0.0, trusted_proxies=("127.0.0.1",))
    state = app.state.serve
    assert (state.max_pending, state.client_slots) == (8, 2)
    real = app.state.batcher._infer
    app.state.batcher._infer = lambda x: (time.sleep(0.3), real(x))[1]  # a slow model
    images = [_png(seed) for seed in range(12)]
    flood, other = {"X-Forwarded-For": "10.0.0.1"}, {"X-Forwarded-For": "10.0.0.2"}  # as the proxy says
    with serve.serve_in_thread(app) as url:

        async def go() -> tuple[list[httpx.Response], httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                flooding = [asyncio.ensure_future(c.post("/predict", content=d, headers=flood)) for d in images]
                await asyncio.sleep(0.1)  # the flood is in
                mine = await c.post("/predict", content=images[0], headers=other)
                return list(await asyncio.gather(*flooding)), mine

        answers, mine = asyncio.run(go())
    assert mine.status_code == 200, mine.text
    codes = [a.status_code for a in answers]
    assert 1 <= codes.count(200) <= 4 and codes.count(503) >= 8, codes  # 2 at a time, over ~0.6 s
    busy = next(a for a in answers if a.status_code == 503)
    assert "this client" in busy.json()["error"] and busy.headers["retry-after"] == "1"
    assert state.pending == 0 and state.inflight_bytes == 0 and state.clients == {}  # all given back


def test_a_client_cannot_claim_new_shares_with_x_forwarded_for(tiny_run) -> None:
    """Without a trusted proxy the header is ignored: a flood naming a new address in every request is still
    one client, held to its share (uvicorn's default trusted any loopback client's header)."""
    app = serve.create_app(tiny_run, max_batch=2, max_wait_ms=0.0)
    real = app.state.batcher._infer
    app.state.batcher._infer = lambda x: (time.sleep(0.3), real(x))[1]
    images = [_png(seed) for seed in range(12)]
    with serve.serve_in_thread(app) as url:

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                return await asyncio.gather(
                    *(
                        c.post("/predict", content=d, headers={"X-Forwarded-For": f"10.0.1.{i}"})
                        for i, d in enumerate(images)
                    )
                )

        codes = [a.status_code for a in asyncio.run(go())]
    assert 1 <= codes.count(200) <= 4 and codes.count(503) >= 8, codes  # one share: 2 at a time


def test_trusted_proxies_are_checked_and_reach_uvicorn(tiny_run) -> None:
    from floranet.serving.server import _uvicorn_config

    with pytest.raises(ConfigError, match=r"trusted_proxies must be a list of IP addresses or networks"):
        serve.create_app(tiny_run, trusted_proxies=("proxy.example",))
    default = _uvicorn_config(serve.create_app(tiny_run))
    assert default.proxy_headers is False
    app = serve.create_app(tiny_run, trusted_proxies=["10.0.0.0/8"])
    config = _uvicorn_config(app)
    assert config.proxy_headers is True and config.forwarded_allow_ips == ["10.0.0.0/8"]
    guard = app.state.guard  # the proxy's connections have only the global bound
    assert guard._is_proxy("10.1.2.3") and not guard._is_proxy("11.0.0.1") and not guard._is_proxy("?")


def test_slow_uploads_hold_only_the_bytes_they_have_sent(tiny_run) -> None:
    """Bodies count against the bytes budget as they arrive: ten uploads that declare 90 KB each and trickle
    hold ten bytes, not 900 KB of a 256 KB budget, so a normal upload still gets in."""
    app = serve.create_app(tiny_run, max_inflight_bytes=256 * 1024, client_share=1.0, request_timeout_s=20.0)
    state = app.state.serve
    _, rose = _rose()
    with serve.serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: 90000\r\n\r\n"
        ).encode()
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
        try:
            for sock in slow:
                sock.sendall(head + b"\xff")
            deadline = time.monotonic() + 5
            while state.inflight_bytes < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert state.inflight_bytes == 10  # one byte each
            with httpx.Client(base_url=url, timeout=30) as c:
                r = c.post("/predict", content=rose)
            assert r.status_code == 200, r.text
        finally:
            for sock in slow:
                sock.close()


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_client_keeps_one_share_while_any_of_its_requests_is_open(tiny_run) -> None:
    """A request that ends with nothing held (an empty body) used to drop its client's share while another
    request of the client, admitted and not yet sending, still held it: that one then counted against a share
    nobody saw, and the client's next upload got a fresh budget. Here the client's budget is 64 KiB: two 50 KB
    uploads at once are one too many, however many empty requests come between them."""
    app = serve.create_app(
        tiny_run, max_upload_bytes=64 * 1024, max_inflight_bytes=256 * 1024, client_share=0.25, request_timeout_s=20.0
    )
    state = app.state.serve
    with serve.serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])

        def head(length: int) -> bytes:
            return (
                f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()

        first = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            first.sendall(head(60_000))  # admitted, no byte of its body yet
            assert _wait_for(lambda: len(state.clients) == 1)
            with httpx.Client(base_url=url, timeout=30) as c:
                assert c.post("/predict", content=b"").status_code == 400  # ends holding nothing
            assert len(state.clients) == 1  # the first request's share is still the client's
            first.sendall(b"\xff" * 50_000)
            assert _wait_for(lambda: state.inflight_bytes == 50_000)
            with httpx.Client(base_url=url, timeout=30) as c:
                second = c.post("/predict", content=b"\xff" * 50_000)
            assert second.status_code == 503 and "this client already has" in second.json()["error"], second.text
        finally:
            first.close()
        assert _wait_for(lambda: state.clients == {} and state.inflight_bytes == 0)


def test_a_refusal_mid_upload_reaches_clients_that_read_after_sending(tiny_run) -> None:
    """A 413 or 503 sent before the whole body was read used to close the socket with the rest unread: the kernel
    sent a reset, and http.client (requests, urllib) lost the answer (IncompleteRead or ConnectionResetError in
    some of 20 tries here)."""
    import contextlib
    import http.client

    app = serve.create_app(tiny_run, max_upload_bytes=64 * 1024)
    body = bytes(32 << 20)  # 32 MiB declared: refused from its Content-Length while the client still sends
    with serve.serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        for attempt in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            # Refused while still sending (a broken pipe): the answer is there to read all the same
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
            answer = conn.getresponse()
            assert (attempt, answer.status) == (attempt, 413)
            assert b"upload too large" in answer.read()
            conn.close()
        with httpx.Client(base_url=url, timeout=30) as c:  # and the server goes on
            assert c.get("/health").status_code == 200


def _lambda_run(tiny_run: Path, tmp_path: Path) -> Path:
    import keras

    run = tmp_path / "lambda-run"
    run.mkdir()
    shutil.copy(tiny_run / "class_names.json", run / "class_names.json")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(run / "model.keras")
    return run


def test_model_with_a_lambda_layer_is_refused_unless_unsafe(tiny_run, tmp_path) -> None:
    run = _lambda_run(tiny_run, tmp_path)
    with pytest.raises(ModelError, match="Lambda|safe"):
        serve.create_app(run)
    app = serve.create_app(run, unsafe=True)
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/predict?gradcam=1", content=_png())
        assert r.status_code == 200, r.text
        assert [row["class"] for row in r.json()["top_k"]] != []
        assert r.json()["gradcam_png"] is None and "Grad-CAM" in r.json()["gradcam_error"]


def test_a_failing_overlay_keeps_the_prediction(app, monkeypatch, caplog) -> None:
    """Only ModelError was caught around Grad-CAM: any other failure in it made /predict a 500 and lost the
    prediction. Now the answer stands with gradcam_error, and the details go to the server's log only."""
    from floranet.serving.overlay import GradCamOverlay

    def broken(*args, **kwargs):
        raise RuntimeError("details under /srv/secret")

    monkeypatch.setattr(GradCamOverlay, "png", broken)
    with TestClient(app, base_url=LOCAL) as c, caplog.at_level("ERROR", logger="floranet.serve"):
        r = c.post("/predict?gradcam=1", content=_png())
    assert r.status_code == 200, r.text
    assert r.json()["top_k"] and r.json()["gradcam_png"] is None
    assert r.json()["gradcam_error"] == "Grad-CAM failed (internal error: RuntimeError)"
    assert "/srv/secret" in caplog.text and "/srv/secret" not in r.text


def test_one_clients_many_gradcams_do_not_hold_up_anothers_one(tiny_run, monkeypatch) -> None:
    """Grad-CAM ran in a one-thread pool, first come first served: a client looping 32 threads on ?gradcam=1 made
    another client's one overlay wait p50 1.7 s (93 ms idle). Now clients take turns at it: the other's overlay is
    drawn right after the one in progress, before the busy client's queued ones."""
    from floranet.serving.overlay import GradCamOverlay

    app = serve.create_app(tiny_run, max_batch=8, max_wait_ms=0.0, trusted_proxies=("127.0.0.1",))
    pool = app.state.serve.gradcam_pool
    gate, drawn = threading.Event(), []

    def slow_overlay(self, photo: np.ndarray, pixels: np.ndarray, class_index: int, name: str) -> tuple[str, None]:
        drawn.append("b" if photo.shape[0] > photo.shape[1] else "a")  # b sends a tall photo, a wide ones
        assert gate.wait(30)  # the first holds the thread until everyone's overlay is queued
        return "", None

    monkeypatch.setattr(GradCamOverlay, "png", slow_overlay)
    with serve.serve_in_thread(app) as url:

        async def post(c: httpx.AsyncClient, client: str, size: tuple[int, int], seed: int) -> httpx.Response:
            headers = {"X-Forwarded-For": client}  # as the trusted proxy says
            return await c.post("/predict?gradcam=1", content=_png(seed, size), headers=headers)

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                many = [asyncio.ensure_future(post(c, "10.0.0.1", (45, 30), i)) for i in range(6)]
                assert await asyncio.to_thread(_wait_for, lambda: drawn == ["a"] and pool.queued("10.0.0.1") == 5, 30)
                one = asyncio.ensure_future(post(c, "10.0.0.2", (30, 45), 9))
                assert await asyncio.to_thread(_wait_for, lambda: pool.queued("10.0.0.2") == 1, 30)
                gate.set()
                return list(await asyncio.gather(*many, one))

        answers = asyncio.run(go())
    assert [a.status_code for a in answers] == [200] * 7, [a.text for a in answers]
    assert drawn == ["a", "b", "a", "a", "a", "a", "a"], drawn  # first come, first served drew b's last


def test_settings_are_checked_and_non_loopback_hosts_are_flagged(tiny_run) -> None:
    from floranet.errors import ConfigError

    with pytest.raises(ConfigError, match="max_batch"):
        serve.create_app(tiny_run, max_batch=0)
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")
    assert not serve.is_loopback("example.org")


def test_a_lying_client_is_cut_off_while_counting(app) -> None:
    """Chunked upload with no Content-Length: the server stops reading after max_upload_bytes."""
    from floranet.serving.guard import LINGER_BYTES

    limit_mib = 20
    with serve.serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        answer = bytearray()

        def read() -> None:
            with __import__("contextlib").suppress(OSError):
                while chunk := sock.recv(65536):
                    answer.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sock.sendall(
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"%x\r\n" % (1 << 20) + bytes(1 << 20) + b"\r\n"
        sent_mib = 0
        # Past the limit the server answers 413 and closes lingering: it reads and drops what follows, up to
        # LINGER_BYTES in its grace second, so the answer is not lost to a reset; then it cuts the client off.
        cap = limit_mib + (LINGER_BYTES >> 20) + 64
        try:
            while sent_mib < cap:
                sock.sendall(chunk)
                sent_mib += 1
        except OSError:
            pass  # the server closed the connection: we were cut off
        reader.join(10)
        sock.close()
        assert sent_mib < cap, "the server kept reading past the limit and its lingering budget"
        text = bytes(answer).decode("latin-1")
        assert text.startswith("HTTP/1.1 413"), text[:200]
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/health").status_code == 200
        print(f"cut off after {sent_mib} MiB sent; answer: {text.splitlines()[:1]}")


def test_refused_connections_whose_peer_is_gone_log_no_traceback_and_are_counted(tiny_run, caplog) -> None:
    """A client past its connection bound that sends its request and closes at once (as fire-and-forget clients
    do): shutting the write side of the refused socket raised ENOTCONN, the close after it was skipped, and asyncio
    logged a traceback per connection (200 connections: 2,728 log lines), beside a warning line per refusal. Now
    such a connection is closed quietly, and a client's refusals are one warning, then a count per interval."""
    import re

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

    def counted() -> int:  # the first refusal's line, then "refused N more connections ..."
        return sum(int(re.findall(r"refused (\d+) more", m)[0]) if " more " in m else 1 for m in said())

    app = serve.create_app(tiny_run, max_connections_per_client=2, runtime="tensorflow", precision="fp32")
    request = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + bytes(100_000)
    with serve.serve_in_thread(app) as url, caplog.at_level("INFO"):
        guard = app.state.guard
        guard.refusal_log_s = 0.5  # the count comes within the test (10 s by default)
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # the client's bound
        try:
            for s in held:
                s.sendall(request[:100])  # a request in progress: never closed to make room
            assert _wait_for(lambda: guard.count == 2)
            for _ in range(30):
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(request)
            assert _wait_for(lambda: guard.refused == 30)
            assert _wait_for(lambda: counted() == 30), said()
        finally:
            for s in held:
                s.close()
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks[0].getMessage()
    assert said()[0] == "refused a connection from 127.0.0.1: all its connections are busy", said()
    assert len(said()) <= 5, said()  # one line, then a count per interval: not a line per refusal


def test_run_server_warns_when_reachable_from_the_network(tiny_run, monkeypatch, caplog) -> None:
    import uvicorn

    from floranet.errors import ConfigError

    calls = []

    def run(self, sockets=()) -> None:  # what it would serve on; the socket bound for it is closed again
        calls.append(self.config)
        assert [s.getsockname()[1] for s in sockets] == [self.config.port]
        for s in sockets:
            # Listening already: a client that connected once the URL was printed, before uvicorn started, was
            # refused; now it waits in the queue.
            socket.create_connection(("127.0.0.1", s.getsockname()[1]), timeout=5).close()
            s.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    with pytest.raises(ConfigError, match="--api-key"):  # off loopback without a key: refused
        serve.run_server(tiny_run, host="0.0.0.0", port=8123, max_batch=4)
    assert not calls
    for extra, said in (
        ({"insecure_no_auth": True}, "WITHOUT AUTHENTICATION"),
        ({"api_key": "0123456789abcdef-key"}, "with an API key"),
    ):
        caplog.clear()
        with caplog.at_level("WARNING", logger="floranet.serve"):
            serve.run_server(tiny_run, host="0.0.0.0", port=0, max_batch=4, **extra)
        # --port 0 was announced as "on http://0.0.0.0:0/": the port bound is said
        assert calls[-1].host == "0.0.0.0" and calls[-1].port > 0
        assert f"on http://0.0.0.0:{calls[-1].port}/" in caplog.text
        assert "REACHABLE FROM THE NETWORK" in caplog.text and said in caplog.text
    with socket.socket() as taken:  # a port in use: said before the model loads, not uvicorn's exit after it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"Cannot listen on 127.0.0.1:{port} \(Address already in use\); "):
            serve.run_server(tiny_run, port=port)
    from floranet.errors import ModelError

    with pytest.raises(ModelError, match="not found") as refused:  # bound before the run is opened: let go
        serve.run_server(tiny_run.parent / "no-such-run", port=port)
    with socket.socket() as again:  # while the error (and its frames, the socket among them) is still held
        again.bind(("127.0.0.1", port))
    assert refused.value
    caplog.clear()
    with caplog.at_level("WARNING", logger="floranet.serve"):
        serve.run_server(tiny_run)
    assert calls[-1].host == "127.0.0.1" and "REACHABLE" not in caplog.text
    for port in (99999, -1, True):  # said before the model loads, not an OverflowError from bind()
        with pytest.raises(ConfigError, match=rf"port must be an int in \[0, 65535\]. Received: port={port}"):
            serve.run_server(tiny_run, port=port)
    caplog.clear()
    with caplog.at_level("WARNING", logger="floranet.serve"):
        serve.run_server(tiny_run, max_pixels=10**9)  # the run's own limit still holds: said, not silent
    assert "max_pixels=1000000000 is above the run's own limit" in caplog.text


def test_run_server_logs_the_run_path_escaped(tiny_run, tmp_path, monkeypatch, caplog) -> None:
    """The start-up lines logged the run's path raw: a run folder named with an escape sequence or a bidi override
    sent it to the terminal."""
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: None)  # nothing is bound
    run = tmp_path / "run\u202egpj\x1b[2J"
    shutil.copytree(tiny_run, run)
    with caplog.at_level("WARNING", logger="floranet.serve"):
        serve.run_server(run, unsafe=True)
    said = [r.getMessage() for r in caplog.records]
    assert any(str(tmp_path / "run\\u202egpj\\x1b[2J") + " (model " in line for line in said), said
    assert any("loading " + str(tmp_path / "run\\u202egpj\\x1b[2J") in line for line in said), said
    assert not any("\x1b" in line or "\u202e" in line for line in said), said


def test_a_model_that_answers_nan_is_refused_or_answered_500_never_invalid_json(tiny_run, writable_run) -> None:
    """A run whose model answers NaN was served: /predict failed with a bare 500 (NaN is not JSON) and /v2
    answered 200 with ``NaN`` in its body, invalid JSON with meaningless labels."""
    from fastapi.testclient import TestClient

    from floranet.evaluation import evaluate_run
    from floranet.inference.predictor import NON_FINITE
    from modelfiles import poison_run

    poison_run(writable_run)
    with pytest.raises(ModelError, match=r"Cannot serve .*on a blank image the model gave non-finite probabilities"):
        serve.create_app(writable_run, runtime="tensorflow", precision="fp32")
    name, rose = _rose()
    row = predict.load(writable_run, runtime="tensorflow", precision="fp32").predict_bytes(rose, name=name)
    assert row.error == NON_FINITE and row.top_k == ()
    with pytest.raises(ModelError, match="Cannot evaluate on the validation split: the model gave non-finite"):
        evaluate_run(writable_run, runtime="tensorflow", precision="fp32")
    # A model that answers NaN for some images only: those requests get a 500 that says so.
    app = serve.create_app(tiny_run, runtime="tensorflow", precision="fp32", model_name="m")
    app.state.batcher._infer = lambda x: np.full((len(x), 4), np.nan, np.float32)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post("/predict", content=rose)
        assert r.status_code == 500 and NON_FINITE in r.json()["error"], r.text
        doc = {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(rose).decode()]}]
        }
        r = c.post("/v2/models/m/infer", json=doc)
        assert r.status_code == 500 and NON_FINITE in r.json()["error"], r.text


def test_serve_says_why_it_runs_as_it_does(tiny_run, monkeypatch, caplog) -> None:
    """The README says each inference command prints what it picked and why; serve printed only the runtime, so
    `--precision bf16` on a CPU without native bf16 was not said to be emulated there (predict said so)."""
    import uvicorn

    from floranet.inference import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "gpu_available", lambda: False)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: None)  # nothing is bound
    with caplog.at_level("WARNING", logger="floranet.serve"):
        serve.run_server(tiny_run, runtime="openvino", precision="bf16")
    said = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("floranet serve: inference on openvino bf16: ") and "emulated" in line for line in said)
