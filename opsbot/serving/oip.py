"""The Open Inference Protocol v2 tensors as the model server reads and writes them.

JSON tensors (``data`` flat in row-major order or nested) and the binary tensor extension that
Triton's clients use by default: the request body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw bytes of every input whose
``parameters.binary_data_size`` says so, in the order of ``inputs``; outputs asked for with
``parameters.binary_data`` (or ``binary_data_output`` on the request) come back the same way.
BYTES elements in binary form are each a 4-byte little-endian length and that many bytes.

Each input is checked against what the model declares (name, datatype, shape with -1 for any
size), and its values against its own datatype's range, so a bad tensor is a 400 that says what
to send, never a silent cast.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import numpy as np

from opsbot.serving import HEADER_LENGTH

NUMPY_FOR: Final[dict[str, str]] = {
    "BOOL": "bool",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES: Final = frozenset({*NUMPY_FOR, "BYTES"})
# numpy dtype kinds that each v2 datatype family takes from JSON (ints are fine for floats).
_KINDS_FOR: Final = {"BOOL": "b", "UINT": "iu", "INT": "iu", "FP": "iuf", "BYTES": "U"}
_V2_FOR_KIND: Final = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64", "U": "BYTES"}
_WIDTH: Final = {"8": 8, "16": 16, "32": 32, "64": 64}


class TensorError(ValueError):
    """A tensor or request the protocol or the model cannot take; the message is the caller's."""


def _family(datatype: str) -> str:
    return datatype.rstrip("0123456789")


def _bits(datatype: str) -> int:
    return _WIDTH.get(datatype[len(_family(datatype)) :], 0)


def fits(given: str, declared: str) -> bool:
    """Whether values of datatype ``given`` convert to ``declared`` without loss."""
    if given == declared:
        return True
    have, want = _family(given), _family(declared)
    if "BYTES" in (have, want) or want == "BOOL":
        return False
    if have == "BOOL":
        return True
    if want == "FP":
        # Integers are what JSON numbers without a point look like: any float model takes them.
        return have != "FP" or _bits(given) <= _bits(declared)
    if have == "FP":
        return False
    if have == want:
        return _bits(given) <= _bits(declared)
    return have == "UINT" and want == "INT" and _bits(given) < _bits(declared)


@dataclass(frozen=True)
class Declared:
    """One input or output as the model's metadata declares it."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def parse(cls, entries: Any) -> tuple[Declared, ...]:
        found = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            datatype = entry.get("datatype")
            shape = entry.get("shape")
            dims = shape if isinstance(shape, list) else []
            found.append(
                cls(
                    entry["name"],
                    datatype if _is_datatype(datatype) else "",
                    tuple(dims) if all(_is_int(d) for d in dims) else (),
                )
            )
        return tuple(found)


@dataclass(frozen=True)
class Request:
    """An infer request's parts the model server acts on."""

    id: str | None
    instances: list[Any]
    outputs: tuple[str, ...]
    """The outputs asked for by name; empty means all."""
    binary: dict[str, bool]
    """By output name, whether it goes back in binary form."""
    binary_default: bool


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a body."""
    if header_length is None:
        return raw, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(raw):
        raise TensorError(
            f"{HEADER_LENGTH} {header_length!r} must be the byte length of the JSON part of "
            f"the body (0 to {len(raw)})"
        )
    return raw[:length], memoryview(raw)[length:]


def parse_request(
    body: dict[str, Any],
    blob: memoryview,
    inputs: tuple[Declared, ...],
    outputs: tuple[Declared, ...],
    hint: str,
) -> Request:
    """Check an infer request against the model and return its instances and wanted outputs."""
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError('"id" must be a string when given')
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise TensorError(f'"inputs" must be a non-empty list of tensors: send {hint}')
    if len(tensors) > 1:
        raise TensorError(f"this model takes one input tensor, got {len(tensors)}: send {hint}")
    array, used = _input_array(tensors[0], 0, blob, inputs, hint)
    if used != len(blob):
        raise TensorError(
            f"the body has {len(blob) - used} bytes after the binary input data that no "
            "input's binary_data_size accounts for"
        )
    parameters = _parameters(body, "the request")
    binary_default = bool(parameters.get("binary_data_output", False))
    wanted: list[str] = []
    binary: dict[str, bool] = {}
    asked = body.get("outputs")
    if asked is not None:
        if not isinstance(asked, list):
            raise TensorError('"outputs" must be a list of {"name": ...} objects when given')
        known = [o.name for o in outputs]
        for i, entry in enumerate(asked):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise TensorError(f'outputs[{i}] must be an object with a "name"')
            name = entry["name"]
            if known and name not in known:
                raise TensorError(
                    f"outputs[{i}] names {name!r}, which this model does not have: "
                    f"ask for {', '.join(map(repr, known))} or leave outputs out"
                )
            extra = _parameters(entry, f"outputs[{i}]")
            if "classification" in extra:
                raise TensorError(
                    f"outputs[{i}] asks for classification, which this server does not do: "
                    "leave the parameter out"
                )
            wanted.append(name)
            binary[name] = bool(extra.get("binary_data", binary_default))
    instances: list[Any]
    if array.dtype.kind == "S":
        instances = [_utf8(v) for v in array.ravel().tolist()]
        instances = np.asarray(instances, dtype=object).reshape(array.shape).tolist()
    else:
        instances = array.tolist()
    return Request(request_id, instances, tuple(wanted), binary, binary_default)


def _is_datatype(value: Any) -> TypeGuard[str]:
    """Whether a JSON value names a v2 datatype (a list or an object is no name)."""
    return isinstance(value, str) and value in DATATYPES


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise TensorError(f"{what}'s parameters must be an object")
    return parameters


def _utf8(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise TensorError("BYTES input elements must be UTF-8 text for this server") from None


def _input_array(
    tensor: Any, index: int, blob: memoryview, inputs: tuple[Declared, ...], hint: str
) -> tuple[np.ndarray[Any, Any], int]:
    """The input's values shaped as it says, and the bytes of ``blob`` it took."""
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise TensorError(
            f"{where} must be an object with name, shape, datatype and data: send {hint}"
        )
    parameters = _parameters(tensor, where)
    size = parameters.get("binary_data_size")
    needed = ["name", "shape", "datatype"] + ([] if size is not None else ["data"])
    missing = [k for k in needed if k not in tensor]
    if missing:
        raise TensorError(f"{where} has no {', '.join(missing)}: send {hint}")
    name = tensor["name"]
    if not isinstance(name, str):
        raise TensorError(f"{where}.name must be a string")
    shape = tensor["shape"]
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and d >= 0 for d in shape):
        raise TensorError(
            f"{where}.shape must be a list of non-negative integers, batch first "
            f"(for example [2, 4] for two rows of four), got {json.dumps(shape)}"
        )
    datatype = tensor["datatype"]
    if not _is_datatype(datatype):
        raise TensorError(
            f"{where}.datatype {json.dumps(datatype)} is not a v2 datatype: use one of "
            f"{', '.join(sorted(DATATYPES))}"
        )
    _check_declared(where, name, datatype, shape, inputs)
    count = math.prod(shape)
    if count == 0:
        raise TensorError(f"{where} holds no values: send at least one instance")
    if size is not None:
        if "data" in tensor:
            raise TensorError(f"{where} has both data and binary_data_size: send one of them")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(blob):
            raise TensorError(
                f"{where}.parameters.binary_data_size must be the byte length of its data "
                f"after the JSON part (at most {len(blob)})"
            )
        return _from_binary(where, datatype, shape, count, blob[:size]), size
    return _from_json(where, datatype, shape, tensor["data"]), 0


def _check_declared(
    where: str, name: str, datatype: str, shape: list[int], inputs: tuple[Declared, ...]
) -> None:
    if not inputs:
        return  # the model declares nothing (python models): it checks its input itself
    declared = next((d for d in inputs if d.name == name), None)
    if declared is None:
        names = ", ".join(repr(d.name) for d in inputs)
        raise TensorError(f"{where}.name {name!r} is not an input of this model: use {names}")
    if declared.datatype and not fits(datatype, declared.datatype):
        raise TensorError(
            f"{where}.datatype {datatype} does not fit input {name!r}, which takes "
            f"{declared.datatype}: send {declared.datatype}"
        )
    want = declared.shape
    if want and (
        len(want) != len(shape) or any(w >= 0 and w != s for w, s in zip(want, shape, strict=True))
    ):
        shown = "[" + ", ".join("N" if w < 0 else str(w) for w in want) + "]"
        raise TensorError(
            f"{where}.shape {shape} does not fit input {name!r}, which takes {shown} (N: any size)"
        )


def _from_binary(
    where: str, datatype: str, shape: list[int], count: int, data: memoryview
) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        items: list[bytes] = []
        pos = 0
        while pos < len(data):
            if pos + 4 > len(data):
                raise TensorError(f"{where}'s binary BYTES data ends inside a length prefix")
            (length,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if pos + length > len(data):
                raise TensorError(f"{where}'s binary BYTES data ends inside an element")
            items.append(bytes(data[pos : pos + length]))
            pos += length
        if len(items) != count:
            raise TensorError(f"{where} holds {len(items)} BYTES elements but shape says {count}")
        return np.array(items, dtype=object).astype(bytes).reshape(shape)
    dtype = np.dtype(NUMPY_FOR[datatype])
    if len(data) != count * dtype.itemsize:
        raise TensorError(
            f"{where}.parameters.binary_data_size is {len(data)} bytes but shape {shape} of "
            f"{datatype} needs {count * dtype.itemsize}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise TensorError(f"{where} holds NaN or infinite values: send finite numbers")
    return array


def _from_json(where: str, datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    if not isinstance(data, list):
        raise TensorError(f"{where}.data must be a list (flat in row-major order, or nested)")
    if not data:
        raise TensorError(f"{where} holds no values: send at least one instance")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.dtype.kind not in "biufU":
        raise TensorError(
            f"{where}.data must be a regular array of "
            f"{'strings' if datatype == 'BYTES' else 'numbers'}, not ragged or mixed lists"
        )
    family = _family(datatype)
    if array.dtype.kind not in _KINDS_FOR[family]:
        wanted = {"BOOL": "true/false", "BYTES": "strings", "FP": "numbers"}.get(family, "integers")
        raise TensorError(f"{where}.data must hold {wanted} for datatype {datatype}")
    if family in ("INT", "UINT"):
        info = np.iinfo(np.dtype(NUMPY_FOR[datatype]))
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise TensorError(
                f"{where}.data holds {bad}, outside {datatype}'s range {info.min} to "
                f"{info.max}: send a wider datatype"
            )
    elif family == "FP" and datatype != "FP64":
        finfo = np.finfo(np.dtype(NUMPY_FOR[datatype]))
        if float(np.abs(array).max()) > float(finfo.max):
            raise TensorError(f"{where}.data holds values beyond {datatype}'s range: send FP64")
    if list(array.shape) != shape:
        if array.ndim != 1 or array.size != math.prod(shape):
            raise TensorError(
                f"{where}.data holds {array.size} values shaped {list(array.shape)} but shape "
                f"says {shape} ({math.prod(shape)} values): send data flat in row-major order "
                "or nested to match shape"
            )
        array = array.reshape(shape)
    return array


def output_tensor(declared: Declared | None, name: str, predictions: list[Any]) -> dict[str, Any]:
    """An output tensor of ``predictions``, in the model's declared datatype when it has one."""
    try:
        array = np.asarray(predictions)
    except (ValueError, TypeError, OverflowError):  # ragged or unusual: pass it through as is
        array = None
    if array is None or array.dtype.kind not in _V2_FOR_KIND:
        return {"name": name, "shape": [len(predictions)], "datatype": "BYTES", "data": predictions}
    datatype = _V2_FOR_KIND[array.dtype.kind]
    if (
        declared is not None
        and declared.datatype in NUMPY_FOR
        and array.dtype.kind in "biuf"
        and _family(declared.datatype) != "BOOL"
    ):
        datatype = declared.datatype
        array = array.astype(NUMPY_FOR[datatype])
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array}


def _json_default(value: Any) -> Any:
    # Python models often return numpy scalars or arrays inside plain lists.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    """Compact JSON, numpy values included."""
    return json.dumps(value, default=_json_default, separators=(",", ":")).encode()


def encode_reply(reply: dict[str, Any], binary: dict[str, bool]) -> tuple[bytes, int | None]:
    """The reply body, and the JSON part's length when some output went in binary form."""
    blobs: list[bytes] = []
    for tensor in reply["outputs"]:
        data = tensor["data"]
        if binary.get(tensor["name"], False):
            blob = _to_binary(tensor["datatype"], data)
            blobs.append(blob)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            del tensor["data"]
        elif isinstance(data, np.ndarray):
            tensor["data"] = data.ravel().tolist()
    head = dumps(reply)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_binary(datatype: str, data: Any) -> bytes:
    if datatype == "BYTES":
        values = data.ravel().tolist() if isinstance(data, np.ndarray) else list(data)
        parts = []
        for value in values:
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    array = np.ascontiguousarray(data, dtype=NUMPY_FOR[datatype])
    return array.tobytes()
