"""Reading a KServe v2 request's JSON and tensors without a server: limits and messages of `serving.tensors`."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from floranet.serving import tensors
from floranet.serving.uploads import RequestError

B64 = base64.b64encode(b"\xff\xd8 not really a jpeg").decode()


def _image_request(**extra: object) -> dict:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}], **extra}


def test_nested_lists_are_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 MB of nested empty lists hold no commas: 10 million lists passed the values check and held the
    interpreter for seconds. Lists and objects are counted too, and refused unparsed."""
    body = b'{"x":[' + b",".join([b"[" * 50 + b"]" * 50] * 20) + b"]}"  # 1,002 containers, 19 commas
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(RequestError, match="holds 1,002 lists and objects; the limit is 1,000 ") as e:
        tensors.parse_request(body, None, max_values=1_000, max_containers=1_000)
    assert e.value.status == 413
    objects = b'{"x":' * 600 + b"0" + b"}" * 600
    with pytest.raises(RequestError, match="holds 600 lists and objects; the limit is 500 "):
        tensors.parse_request(objects, None, max_containers=500)


def test_brackets_and_commas_inside_strings_do_not_count() -> None:
    """A request id, or a BYTES string (refused for not being base64), may hold any text: only what builds
    objects counts, so neither gets the 413 of a request too big to parse."""
    tricky = '[{,"\\\\' * 2_000 + '\\"[{,'  # escaped backslashes and quotes: still one string
    parsed = tensors.parse_request(json.dumps(_image_request(id=tricky)).encode(), None, 100, 4, 100)
    assert parsed.id == tricky and parsed.inputs[0].data == [base64.b64decode(B64)]
    text = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["[{," * 5_000]}]}
    with pytest.raises(RequestError, match="base64") as e:
        tensors.parse_request(json.dumps(text).encode(), None, 100, 4, 100)
    assert e.value.status == 400
    # A string that ends in an escaped backslash ends there: the lists after it count.
    body = b'{"id":"\\\\",' + b'"x":' + b"[" * 200 + b"]" * 200 + b"}"
    with pytest.raises(RequestError, match="holds 201 lists and objects"):
        tensors.parse_request(body, None, 100, 4, 100)
    with pytest.raises(RequestError, match="holds 5,001 or more values; the limit is 100 "):
        tensors.parse_request(json.dumps({"x": [0] * 5_001, "id": "," * 9_000}).encode(), None, 100, 4, 100)


def test_other_encodings_json_reads_are_counted_the_same() -> None:
    """json.loads also reads UTF-16 and UTF-32: their strings and lists are told apart as in UTF-8."""
    fine = json.dumps(_image_request(id="[" * 3_000), ensure_ascii=False)
    assert tensors.parse_request(fine.encode("utf-16"), None, 100, 4, 100).id == "[" * 3_000
    nested = '{"x":' + "[" * 300 + "]" * 300 + ', "id": "\u00e9\\"["}'
    for encoding in ("utf-16-le", "utf-32-be", "utf-8-sig"):
        with pytest.raises(RequestError, match="holds 301 lists and objects"):
            tensors.parse_request(nested.encode(encoding), None, 100, 4, 100)
    with pytest.raises(RequestError, match="not valid JSON") as e:
        tensors.parse_request(b'{"id": "\xff"}', None, 100, 4, 100)
    assert e.value.status == 400


@pytest.mark.parametrize(
    "inp",
    [
        {"name": "pixels", "shape": [1, 10**4000, 10**4000, 3], "datatype": "FP32", "data": [0]},
        {
            "name": "pixels",
            "shape": [1, 10**4000, 10**4000, 3],
            "datatype": "FP32",
            "parameters": {"binary_data_size": 4},
        },
        {"name": "image", "shape": [10**4000, 10**4000], "datatype": "BYTES", "data": ["AA=="]},
        {"name": "pixels", "shape": [10**4000, 32, 32, 3], "datatype": "FP32", "data": [0]},
        {"name": "pixels", "shape": [1, 2**31, 1, 3], "datatype": "UINT8", "data": [0]},
    ],
)
def test_huge_dimensions_are_refused_by_name_with_their_numbers_capped(inp: dict) -> None:
    """A product of more than 4,300 digits made the message's f"{n:,}" raise ValueError (a 500): dimensions
    are bounded before they are multiplied, and the echo writes each number short."""
    doc = json.dumps({"inputs": [inp]}).encode()
    binary = b"\0" * 4 if "parameters" in inp else b""
    with pytest.raises(
        RequestError, match=r"shape must be a list of 1 to 8 ints in \[0, 2147483647\]\. Received: "
    ) as e:
        tensors.parse_request(doc + binary, str(len(doc)) if binary else None, 10**6, 4)
    assert e.value.status == 400 and len(e.value.message) < 250
    assert "~1e+4000" in e.value.message or "[1, 2147483648, 1, 3]" in e.value.message


def test_counts_in_messages_are_written_short() -> None:
    big = [2**31 - 1] * 8  # within every dimension's bound: 75 digits of elements
    doc = {"inputs": [{"name": "image", "shape": big, "datatype": "BYTES", "data": []}]}
    with pytest.raises(RequestError, match=r"^4\.52e\+74 images in one request; the limit is 4 "):
        tensors.parse_request(json.dumps(doc).encode(), None, max_images=4)
    doc = {"inputs": [{"name": "pixels", "shape": big, "datatype": "FP32", "data": []}]}
    with pytest.raises(RequestError, match=r"has 4\.52e\+74 elements; the JSON is"):
        tensors.parse_request(json.dumps(doc).encode(), None)
    assert [tensors.number(n) for n in (0, 12_345, -(10**20), 10**400)] == ["0", "12,345", "-1.00e+20", "~1e+400"]


def test_an_inputs_name_and_datatype_are_checked_before_its_images_are_counted() -> None:
    """`pixels` sent as BYTES answered "3,072 images in one request" (413): a BYTES element counts as an image,
    but these are not the model's images at all."""
    takes = {"image": ("BYTES",), "pixels": ("FP32", "UINT8")}
    cases = [
        ("pixels", "BYTES", "input 'pixels' must be FP32 or UINT8. Received: BYTES"),
        ("image", "UINT8", "input 'image' must be BYTES. Received: UINT8"),
        ("x", "BYTES", "unknown input 'x'; this model takes 'image' or 'pixels'"),
    ]
    for name, datatype, message in cases:
        inp = {"name": name, "shape": [1, 32, 32, 3], "datatype": datatype, "data": ["AA=="] * 3072}
        with pytest.raises(RequestError, match=f"^{re.escape(message)}$") as e:
            tensors.parse_request(json.dumps({"inputs": [inp]}).encode(), None, max_images=4, datatypes=takes)
        assert e.value.status == 400


def _pixels(datatype: str, data: list) -> bytes:
    shape = [2, 2] if isinstance(data[0], list) else [1, 4]
    return json.dumps({"inputs": [{"name": "pixels", "shape": shape, "datatype": datatype, "data": data}]}).encode()


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", [0.5, 1, "x", 2], 'FP32 data must hold numbers. Received: "x" (element 2)'),
        ("FP32", [[1, 2], [None, 3]], "FP32 data must hold numbers. Received: null (element 2)"),
        ("UINT8", [1, 1, 1, "7"], 'UINT8 data must hold integers. Received: "7" (element 3)'),
        ("UINT8", [1, 2.5, 3, 4], "UINT8 data must hold integers. Received: 2.5 (element 1)"),
        ("UINT8", [1, 2, 3, 256], "UINT8 values must be in [0, 255]. Received: 256 (element 3)"),
        ("UINT8", [[1, -1], [3, 4]], "UINT8 values must be in [0, 255]. Received: -1 (element 1)"),
        ("UINT8", [1, 1, 1, 10**20], "UINT8 values must be in [0, 255]. Received: 1.00e+20 (element 3)"),
        ("FP32", [1, 1, 1, 10**400], "FP32 value ~1e+400 (element 3) is out of range"),
        ("FP32", [1, 1, 1, "x" * 500], f'FP32 data must hold numbers. Received: "{"x" * 76}... (element 3)'),
    ],
)
def test_data_that_is_not_numbers_is_refused_echoing_the_first_bad_element(
    datatype: str, data: list, message: str
) -> None:
    """The message said neither which element was not a number nor what it held (and said it of 10**20)."""
    with pytest.raises(RequestError, match=f"^input 'pixels': {re.escape(message)}$") as e:
        tensors.parse_request(_pixels(datatype, data), None)
    assert e.value.status == 400


def test_an_int_past_64_bits_is_a_number() -> None:
    """numpy holds 10**20 as an object: it was refused as "not numbers". As FP32 it is the float 1e20 (which
    the server then refuses as a pixel, outside [0, 255]), as UINT8 an int out of range (above)."""
    assert tensors.parse_request(_pixels("FP32", [1, 2**63, -1, 10**20]), None).inputs[0].data.tolist() == [
        1.0,
        np.float32(2**63),
        -1.0,
        np.float32(1e20),
    ]


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", [0.5, 0.5, 0.5, True], "FP32 data must hold numbers. Received: true (element 3)"),
        ("FP32", [True] * 4, "FP32 data must hold numbers. Received: true (element 0)"),
        ("UINT8", [[7, 1], [False, 1]], "UINT8 data must hold integers. Received: false (element 2)"),
        ("UINT8", [False] * 4, "UINT8 data must hold integers. Received: false (element 0)"),
    ],
)
def test_true_and_false_are_not_numbers_even_among_numbers(datatype: str, data: list, message: str) -> None:
    """All-bool data was refused, but numpy reads a true among numbers as 1: it was taken silently."""
    with pytest.raises(RequestError, match=f"^input 'pixels': {re.escape(message)}$"):
        tensors.parse_request(_pixels(datatype, data), None)


def test_binary_data_without_its_header_is_named_as_such() -> None:
    """Without Inference-Header-Content-Length the whole body is JSON: binary data after it answered only
    "not valid JSON: Extra data: line 1 column 121"."""
    head = {"inputs": [{"name": "pixels", "shape": [1, 4], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}]}
    hint = "(binary tensor data after the JSON needs the Inference-Header-Content-Length header: the JSON's length"
    for binary in (
        b"\1\2\3\4",
        b"\xff\xd8\xff\xe0",
        b"\4\0\0\0\xff\xd8\xff\xe0",
    ):  # text; not UTF-8; a BYTES length first
        with pytest.raises(RequestError, match="^the inference request is not valid JSON: .*" + re.escape(hint)):
            tensors.parse_request(json.dumps(head).encode() + binary, None)
    with pytest.raises(RequestError, match=r"Extra data: line 1 column 4 \(char 3\)$"):  # text after the JSON
        tensors.parse_request(b"{} trailing words", None)
    with pytest.raises(RequestError, match=r"invalid start byte$"):  # not UTF-8 inside the JSON
        tensors.parse_request(b'{"inputs": [{"name": "\xff"}]}', None)
    body = json.dumps(head).encode()
    assert tensors.parse_request(body + b"\1\2\3\4", str(len(body))).inputs[0].data.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(("request_id", "echo"), [(5, "5"), (["r1"], '["r1"]'), (True, "true"), ({"a": 1}, '{"a": 1}')])
def test_an_id_that_is_not_a_string_is_refused(request_id: object, echo: str) -> None:
    """The protocol's id is a string: 5 was dropped without a word, and the answer carried no id."""
    with pytest.raises(RequestError, match=f"^'id' must be a string. Received: id={re.escape(echo)}$") as e:
        tensors.parse_request(json.dumps(_image_request(id=request_id)).encode(), None)
    assert e.value.status == 400
    assert tensors.parse_request(json.dumps(_image_request(id=None)).encode(), None).id is None  # null: no id
    assert tensors.parse_request(json.dumps(_image_request(id="5")).encode(), None).id == "5"


def test_an_output_requested_twice_is_refused() -> None:
    """[{"name": "probabilities"}, {"name": "probabilities"}] answered 200 with the same output twice."""
    again = {"name": "probabilities", "parameters": {"binary_data": True}}  # other parameters: still the same output
    twice = [{"name": "labels"}, {"name": "probabilities"}, again]
    with pytest.raises(RequestError, match="^output 'probabilities' is requested twice; name each output once$") as e:
        tensors.parse_request(json.dumps(_image_request(outputs=twice)).encode(), None)
    assert e.value.status == 400
    once = tensors.parse_request(json.dumps(_image_request(outputs=twice[:2])).encode(), None).outputs
    assert [o.name for o in once or ()] == ["labels", "probabilities"]
