"""Open Inference Protocol (KServe v2) tensors: reading a request and writing a response.

A request is a JSON object, optionally followed by binary tensor data (the *binary tensor data extension*:
the ``Inference-Header-Content-Length`` header gives the JSON's length; each input with a
``binary_data_size`` parameter takes that many bytes of what follows, in order). The JSON's values, lists
and objects are counted before it is parsed (:mod:`~floranet.serving.jsonbody`), and every tensor is checked
before it is allocated: datatypes, shapes, element counts against the bytes that are really there, and the
binary parts against the body's length. A ``BYTES`` element is a 4-byte little-endian length and
that many bytes in binary data, a base64 string in JSON (JSON strings cannot carry raw image bytes).

Only the datatypes floranet takes are read: ``BYTES`` (encoded images), ``UINT8`` and ``FP32`` (decoded
pixels). Every problem is a :class:`~floranet.serving.uploads.RequestError` with status 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from floranet.serving import jsonbody
from floranet.serving.jsonbody import number, short
from floranet.serving.uploads import RequestError

# Datatype → little-endian numpy dtype of one element (BYTES has no fixed size).
FIXED: dict[str, np.dtype[Any]] = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}
DATATYPES = ("BYTES", *FIXED)
# Outputs may also be BOOL (one byte per element, as Triton writes it).
OUTPUT_FIXED: dict[str, np.dtype[Any]] = {**FIXED, "BOOL": np.dtype("?")}
MAX_INPUTS = 8
MAX_DIMS = 8
MAX_DIM = 2**31 - 1  # no tensor floranet takes comes near; 8 such dims multiply to 75 digits at most
_LENGTH = struct.Struct("<I")
_END = object()


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def too_many_images(n: int, limit: int) -> RequestError:
    """The 413 for a request of ``n`` images when one client may send ``limit``."""
    return RequestError(413, f"{number(n)} images in one request; the limit is {limit} (one client's share)")


@dataclass(frozen=True)
class InputTensor:
    """One input of a request: ``data`` is a numpy array (UINT8/FP32) or a list of bytes (BYTES), flat."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RequestedOutput:
    """One output a request asks for: as binary data or JSON (None: as the request's ``binary_data_output``
    says), with Triton's classification extension."""

    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request. ``outputs`` is None when the request names none (then: all of them)."""

    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] | None = None
    id: str | None = None
    binary_output: bool = False


@dataclass
class OutputTensor:
    """One output of a response."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # numpy array (FP32, BOOL) or list of str (BYTES)
    binary: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_request(
    body: bytes,
    header_length: str | None,
    max_values: int | None = None,
    max_images: int | None = None,
    max_containers: int | None = None,
    datatypes: Mapping[str, tuple[str, ...]] | None = None,
) -> InferRequest:
    """Reads an inference request (JSON, or JSON followed by binary tensor data).

    Args:
        body: The whole request body (already bounded by the server's upload limit).
        header_length: The ``Inference-Header-Content-Length`` header, if any.
        max_values: The most numbers a valid request's JSON can hold; JSON with more commas (outside strings)
            is refused before it is parsed.
        max_images: The most images one request may hold: an input whose shape declares more (its first
            dimension; a BYTES input's element count) is refused before any of its elements is read (5 million
            empty BYTES elements held a thread for seconds).
        max_containers: The most lists and objects a valid request's JSON can hold; JSON with more (outside
            strings) is refused before it is parsed (10 million nested empty lists, 20 MB and no commas, held
            the interpreter for seconds and kept 1-2 GB).
        datatypes: The inputs a model takes, by name, and the datatypes of each: another name or datatype is
            refused before the input's images are counted (a ``pixels`` tensor sent as BYTES is a datatype
            error, not 3,072 images).

    Raises:
        RequestError: 400 for anything malformed or inconsistent, 413 for JSON with too many values, lists or
            objects, or an input of more than ``max_images`` images.
    """
    json_length = _json_length(header_length, len(body))
    doc = jsonbody.load(body[:json_length], max_values, max_containers, whole_body=header_length is None)
    if not isinstance(doc, dict):
        raise _bad(f"the inference request must be a JSON object. Received: {type(doc).__name__}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not 1 <= len(raw_inputs) <= MAX_INPUTS:
        raise _bad(f"'inputs' must be a list of 1 to {MAX_INPUTS} tensors. Received: inputs={short(raw_inputs)}")
    binary = memoryview(body)[json_length:]
    inputs, used = [], 0
    for raw in raw_inputs:
        tensor, size = _input(raw, binary[used:], json_length, max_images, datatypes)
        inputs.append(tensor)
        used += size
    if used != len(binary):
        raise _bad(
            f"the binary tensor data is {len(binary):,} bytes but the inputs' binary_data_size add up to {used:,}"
        )
    params = _parameters(doc.get("parameters"), "parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):  # was dropped: the answer carried no id
        raise _bad(f"'id' must be a string. Received: id={short(request_id)}")
    return InferRequest(tuple(inputs), _outputs(doc.get("outputs")), request_id, _flag(params, "binary_data_output"))


def _flag(params: dict[str, Any], key: str) -> bool:
    """A boolean parameter: JSON true or false only (``bool("false")`` would be True)."""
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false. Received: {key}={short(value)}")
    return value


def _json_length(header: str | None, total: int) -> int:
    if header is None:
        return total
    # ASCII digits only, as HTTP writes lengths: int() also takes "1_0", " 2 " and other scripts' digits.
    if not (header.isascii() and header.isdigit()):
        raise _bad(f"Inference-Header-Content-Length must be ASCII digits. Received: {header[:40]!r}")
    digits = header.lstrip("0")
    if not digits or len(digits) > len(str(total)) or int(digits) > total:  # no int() of thousands of digits
        raise _bad(f"Inference-Header-Content-Length must be in [1, body size {total:,}]. Received: {header[:40]}")
    return int(digits)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad(f"'{where}' must be a JSON object. Received: {short(raw)}")
    return raw


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    """The shape, each dimension bounded before any product of them is taken (or written in a message)."""
    ints = isinstance(raw, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in raw)
    if not (ints and 1 <= len(raw) <= MAX_DIMS and all(0 <= d <= MAX_DIM for d in raw)):
        echo = short(raw)
        if ints:  # each number capped: JSON allows ints of 4,300 digits
            dims = [number(d, grouping=False) for d in raw[: MAX_DIMS + 1]]
            echo = f"[{', '.join(dims)}{', ...' if len(raw) > MAX_DIMS + 1 else ''}]"
        raise _bad(
            f"input {name!r}: shape must be a list of 1 to {MAX_DIMS} ints in [0, {MAX_DIM}]. Received: {echo[:120]}"
        )
    return tuple(raw)


def _input(
    raw: Any,
    binary: memoryview,
    json_length: int,
    max_images: int | None,
    datatypes: Mapping[str, tuple[str, ...]] | None,
) -> tuple[InputTensor, int]:
    """One input tensor and the number of binary bytes it took; refused unread past ``max_images``, or when
    ``datatypes`` does not have its name and datatype."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise _bad(f"each input must be an object with a 'name'. Received: {short(raw)}")
    name = raw["name"][:64]
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise _bad(f"input {name!r}: datatype must be one of {', '.join(DATATYPES)}. Received: {short(datatype)}")
    if datatypes is not None and name not in datatypes:
        raise _bad(f"unknown input {name!r}; this model takes {' or '.join(repr(n) for n in datatypes)}")
    if datatypes is not None and datatype not in datatypes[name]:
        raise _bad(f"input {name!r} must be {' or '.join(datatypes[name])}. Received: {datatype}")
    shape = _shape(raw.get("shape"), name)
    count = math.prod(shape)
    images = count if datatype == "BYTES" else shape[0]  # a BYTES element is an image, whatever the shape
    if max_images is not None and images > max_images:
        raise too_many_images(images, max_images)
    params = _parameters(raw.get("parameters"), f"inputs[{name}].parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise _bad(
                f"input {name!r}: binary_data_size must be an int in [0, {len(binary):,}] (the binary data "
                f"left). Received: {short(size)}"
            )
        data = _from_binary(name, datatype, count, binary[:size])
        return InputTensor(name, datatype, shape, data), size
    if "data" not in raw:
        raise _bad(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    return InputTensor(name, datatype, shape, _from_json(name, datatype, shape, raw["data"], json_length)), 0


def _from_binary(name: str, datatype: str, count: int, chunk: memoryview) -> Any:
    if datatype in FIXED:
        dtype = FIXED[datatype]
        if count * dtype.itemsize != len(chunk):
            raise _bad(
                f"input {name!r}: {number(count)} {datatype} elements need {number(count * dtype.itemsize)} bytes; "
                f"binary_data_size is {len(chunk):,}"
            )
        return np.frombuffer(chunk, dtype=dtype, count=count)
    if count * _LENGTH.size > len(chunk):  # every element needs at least its 4-byte length
        raise _bad(f"input {name!r}: {number(count)} BYTES elements cannot fit in {len(chunk):,} bytes")
    out, pos = [], 0
    for i in range(count):
        if pos + _LENGTH.size > len(chunk):
            raise _bad(f"input {name!r}: BYTES element {i} has no length (the data ends at byte {pos:,})")
        (length,) = _LENGTH.unpack_from(chunk, pos)
        pos += _LENGTH.size
        if pos + length > len(chunk):
            raise _bad(f"input {name!r}: BYTES element {i} declares {length:,} bytes; {len(chunk) - pos:,} are left")
        out.append(bytes(chunk[pos : pos + length]))
        pos += length
    if pos != len(chunk):
        raise _bad(f"input {name!r}: {len(chunk) - pos:,} bytes follow the last of its {count} BYTES elements")
    return out


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any, json_length: int) -> Any:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: 'data' must be a JSON array. Received: {short(data)}")
    if count > json_length:  # every element takes at least one character of the JSON
        raise _bad(
            f"input {name!r}: shape {list(shape)} has {number(count)} elements; the JSON is {json_length:,} bytes"
        )
    if datatype == "BYTES":
        flat = _flatten_strings(name, data, count)
        try:
            return [base64.b64decode(s, validate=True) for s in flat]
        except (binascii.Error, ValueError):
            raise _bad(f"input {name!r}: BYTES elements in JSON must be base64 strings of the encoded image") from None
    try:
        array = np.asarray(data)
    except ValueError:
        raise _bad(f"input {name!r}: 'data' is a ragged array; it must match shape {list(shape)}") from None
    array = jsonbody.numbers(name, datatype, data, array)
    if array.size != count or (array.ndim > 1 and array.shape != shape):
        raise _bad(
            f"input {name!r}: 'data' has {array.size:,} elements in shape {list(array.shape)}; shape says {list(shape)}"
        )
    if datatype == "UINT8" and array.size and (array.min() < 0 or array.max() > 255):
        i = int(np.flatnonzero((array < 0) | (array > 255))[0])
        value = array.reshape(-1)[i]
        raise _bad(f"input {name!r}: UINT8 values must be in [0, 255]. Received: {value} (element {i})")
    with np.errstate(over="ignore"):  # FP32 overflow becomes inf, which the caller refuses
        return array.reshape(-1).astype(FIXED[datatype])


def _flatten_strings(name: str, data: list[Any], count: int) -> list[str]:
    flat: list[str] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list) and len(stack) < MAX_DIMS:
            stack.append(iter(item))
        elif isinstance(item, str) and len(flat) < count:
            flat.append(item)
        else:
            raise _bad(f"input {name!r}: BYTES data must be {count} base64 strings. Received: {short(item)}")
    if len(flat) != count:
        raise _bad(f"input {name!r}: BYTES data has {len(flat)} elements; shape says {count}")
    return flat


def _outputs(raw: Any) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_INPUTS:
        raise _bad(f"'outputs' must be a list of at most {MAX_INPUTS} objects. Received: {short(raw)}")
    out: list[RequestedOutput] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"each requested output must be an object with a 'name'. Received: {short(item)}")
        if any(o.name == item["name"][:64] for o in out):  # was answered twice
            raise _bad(f"output {item['name'][:64]!r} is requested twice; name each output once")
        params = _parameters(item.get("parameters"), f"outputs[{item['name'][:64]}].parameters")
        k = params.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise _bad(f"classification must be an int >= 0. Received: classification={short(k)}")
        binary = _flag(params, "binary_data") if "binary_data" in params else None  # its own word wins
        out.append(RequestedOutput(item["name"][:64], binary, k))
    return tuple(out)


def encode_response(header: dict[str, Any], outputs: list[OutputTensor]) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary data follows it (else None).

    Args:
        header: ``model_name``, ``model_version``, ``id`` (when the request had one), ``parameters``.
        outputs: The outputs, each as JSON data or binary data.
    """
    doc = dict(header)
    doc["outputs"] = []
    chunks: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        params = dict(out.parameters)
        if out.binary:
            blob = _to_binary(out)
            params["binary_data_size"] = len(blob)
            chunks.append(blob)
        else:
            entry["data"] = np.asarray(out.data).reshape(-1).tolist() if out.datatype != "BYTES" else list(out.data)
        if params:
            entry["parameters"] = params
        doc["outputs"].append(entry)
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()  # NaN is not JSON
    if not chunks:
        return text, None
    return text + b"".join(chunks), len(text)


def _to_binary(out: OutputTensor) -> bytes:
    if out.datatype == "BYTES":
        parts = [s.encode() if isinstance(s, str) else bytes(s) for s in out.data]
        return b"".join(_LENGTH.pack(len(p)) + p for p in parts)
    return np.ascontiguousarray(out.data, dtype=OUTPUT_FIXED[out.datatype]).tobytes()
