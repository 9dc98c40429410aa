"""Load a model version from its directory and predict with it.

Formats: ``sklearn`` (model.joblib or model.pkl, loaded with joblib), ``onnx`` (model.onnx, run
with onnxruntime) and ``python`` (a module with a class that has ``load()`` and ``predict()``).
A directory may hold ``sample.json`` (``{"instances": [...]}``): the input used to check a new
version; for sklearn and ONNX models a sample is made from the input shape when there is none.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Protocol

FORMATS = ("sklearn", "onnx", "python")
SAMPLE_FILE = "sample.json"
DEFAULT_ENTRY = "model:Model"


class LoadError(Exception):
    """The model could not be loaded; the message says why and what to fix."""


class PredictError(Exception):
    """The input does not suit the model; the message is for the caller (a 400, never a 500)."""


class LoadedModel(Protocol):
    format: str

    def predict(self, instances: list[Any]) -> list[Any]: ...

    def sample(self) -> list[Any] | None: ...

    def describe(self) -> dict[str, Any]:
        """Inputs and outputs in the shape of the Open Inference Protocol's model metadata."""
        ...


def required_files(path: Path, fmt: str, entry: str | None = None) -> str:
    """Why the directory cannot hold a model of this format; "" when its files are there."""
    if not path.is_dir():
        return f"{path} is not a directory"
    if fmt == "sklearn":
        if not _sklearn_file(path):
            return f"{path} has no model.joblib or model.pkl (save the estimator with joblib.dump)"
    elif fmt == "onnx":
        if not (path / "model.onnx").is_file():
            return f"{path} has no model.onnx"
    elif fmt == "python":
        module, _, cls = (entry or DEFAULT_ENTRY).partition(":")
        if not module or not cls:
            return f"entry {entry!r} must look like module:Class"
        if not (path / f"{module.replace('.', '/')}.py").is_file():
            return f"{path} has no {module}.py (the python format needs a module with a class)"
    else:
        return f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}"
    sample = path / SAMPLE_FILE
    if sample.exists():
        try:
            _read_sample(sample)
        except LoadError as exc:
            return str(exc)
    return ""


def _sklearn_file(path: Path) -> Path | None:
    for name in ("model.joblib", "model.pkl"):
        if (path / name).is_file():
            return path / name
    return None


def _read_sample(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("instances"), list):
        raise LoadError(f'{path} must look like {{"instances": [...]}}')
    instances: list[Any] = data["instances"]
    return instances


def _file_sample(path: Path) -> list[Any] | None:
    sample = path / SAMPLE_FILE
    return _read_sample(sample) if sample.exists() else None


def _as_array(instances: list[Any], dtype: Any = None) -> Any:
    import numpy as np

    if not isinstance(instances, list) or not instances:
        raise PredictError('"instances" must be a non-empty list')
    try:
        # Without a dtype first: casting straight to float would turn a null into NaN.
        array = np.asarray(instances)
    except (ValueError, TypeError) as exc:
        raise PredictError(f'"instances" must be a list of equal-length rows: {exc}') from None
    if array.dtype == object:
        raise PredictError('"instances" must be a list of equal-length rows of numbers')
    if dtype is not None:
        try:
            with np.errstate(over="raise"):
                array = array.astype(dtype)
        except FloatingPointError:
            raise PredictError(
                f'"instances" holds values beyond what the model\'s {np.dtype(dtype).name} input '
                "can hold"
            ) from None
        except (ValueError, TypeError) as exc:
            raise PredictError(f'"instances" must hold numbers: {exc}') from None
    return array


def _jsonable(values: Any) -> list[Any]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    return list(values)


class SklearnModel:
    format = "sklearn"

    def __init__(self, path: Path):
        import joblib

        file = _sklearn_file(path)
        if file is None:
            raise LoadError(required_files(path, "sklearn"))
        try:
            self.estimator = joblib.load(file)
        except Exception as exc:  # a pickle can raise anything; report it as a load error
            raise LoadError(
                f"joblib could not load {file.name}: {type(exc).__name__}: {exc}"
            ) from None
        if not hasattr(self.estimator, "predict"):
            raise LoadError(f"{file.name} holds a {type(self.estimator).__name__}, no predict()")
        self.path = path

    def predict(self, instances: list[Any]) -> list[Any]:
        array = _as_array(instances)
        if array.ndim == 1:
            raise PredictError('"instances" must be a list of rows (a list of lists)')
        expected = getattr(self.estimator, "n_features_in_", None)
        if expected is not None and array.ndim == 2 and array.shape[1] != expected:
            raise PredictError(f"each instance needs {expected} features, got {array.shape[1]}")
        try:
            return _jsonable(self.estimator.predict(array))
        except ValueError as exc:
            raise PredictError(str(exc)) from None

    def sample(self) -> list[Any] | None:
        given = _file_sample(self.path)
        if given is not None:
            return given
        n = getattr(self.estimator, "n_features_in_", None)
        return [[0.0] * int(n)] if n else None

    def describe(self) -> dict[str, Any]:
        n = getattr(self.estimator, "n_features_in_", -1)
        # A classifier predicts its classes' type; a regressor predicts floats.
        classes = getattr(self.estimator, "classes_", None)
        kind = getattr(getattr(classes, "dtype", None), "kind", "f")
        datatype = {"i": "INT64", "u": "UINT64", "f": "FP64", "b": "BOOL"}.get(kind, "BYTES")
        return {
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, int(n)]}],
            "outputs": [{"name": "predictions", "datatype": datatype, "shape": [-1]}],
        }


_ONNX_TYPES = {
    "tensor(float)": ("float32", "FP32"),
    "tensor(double)": ("float64", "FP64"),
    "tensor(int64)": ("int64", "INT64"),
    "tensor(int32)": ("int32", "INT32"),
}


class OnnxModel:
    format = "onnx"

    def __init__(self, path: Path, providers: list[str] | None = None):
        import onnxruntime as ort

        file = path / "model.onnx"
        options = ort.SessionOptions()
        # One instance is one process: let the flavor's CPU cap, not onnxruntime, decide.
        options.intra_op_num_threads = 1
        available = ort.get_available_providers()
        chosen = providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        try:
            self.session = ort.InferenceSession(str(file), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise LoadError(f"onnxruntime could not load model.onnx: {exc}") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = list(first.shape)
        self.dtype = _ONNX_TYPES.get(first.type, ("float32", "FP32"))
        self.path = path

    def predict(self, instances: list[Any]) -> list[Any]:
        array = _as_array(instances, dtype=self.dtype[0])
        want = len(self.input_shape)
        if array.ndim != want:
            raise PredictError(f"each instance must have {want - 1} dimension(s)")
        for axis, size in enumerate(self.input_shape[1:], start=1):
            if isinstance(size, int) and array.shape[axis] != size:
                raise PredictError(f"instances need size {size} on axis {axis}")
        try:
            outputs = self.session.run(None, {self.input_name: array})
        except Exception as exc:  # onnxruntime's errors are untyped; the input was bad
            raise PredictError(f"the model refused the input: {exc}") from None
        return _jsonable(outputs[0])

    def sample(self) -> list[Any] | None:
        given = _file_sample(self.path)
        if given is not None:
            return given
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in self.input_shape[1:]]

        def zeros(shape: list[int]) -> Any:
            return [0.0] * shape[0] if len(shape) == 1 else [zeros(shape[1:])] * shape[0]

        return [zeros(dims)] if dims else [0.0]

    def describe(self) -> dict[str, Any]:
        return {
            "inputs": [
                {
                    "name": i.name,
                    "datatype": _ONNX_TYPES.get(i.type, ("", "BYTES"))[1],
                    "shape": [d if isinstance(d, int) else -1 for d in i.shape],
                }
                for i in self.session.get_inputs()
            ],
            "outputs": [
                {
                    "name": o.name,
                    "datatype": _ONNX_TYPES.get(o.type, ("", "BYTES"))[1],
                    "shape": [d if isinstance(d, int) else -1 for d in (o.shape or [])],
                }
                for o in self.session.get_outputs()
            ],
        }


class PythonModel:
    format = "python"

    def __init__(self, path: Path, entry: str | None = None):
        module_name, _, class_name = (entry or DEFAULT_ENTRY).partition(":")
        file = path / f"{module_name.replace('.', '/')}.py"
        unique = f"opsbot_user_model_{abs(hash(str(path)))}_{module_name.replace('.', '_')}"
        spec = importlib.util.spec_from_file_location(unique, file)
        if spec is None or spec.loader is None:
            raise LoadError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # user code: any error is a load failure with its reason
            raise LoadError(f"importing {file.name} failed: {type(exc).__name__}: {exc}") from None
        finally:
            sys.path.remove(str(path))
        cls = getattr(module, class_name, None)
        if cls is None or not isinstance(cls, type):
            raise LoadError(f"{file.name} has no class {class_name}")
        for method in ("load", "predict"):
            if not callable(getattr(cls, method, None)):
                raise LoadError(f"class {class_name} has no {method}() method")
        try:
            self.obj = cls()
            self.obj.load(str(path)) if _takes_arg(self.obj.load) else self.obj.load()
        except Exception as exc:  # user code
            raise LoadError(f"{class_name}.load() failed: {type(exc).__name__}: {exc}") from None
        self.path = path

    def predict(self, instances: list[Any]) -> list[Any]:
        if not isinstance(instances, list) or not instances:
            raise PredictError('"instances" must be a non-empty list')
        try:
            result = self.obj.predict(instances)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise PredictError(f"{type(exc).__name__}: {exc}") from None
        return _jsonable(result)

    def sample(self) -> list[Any] | None:
        given = _file_sample(self.path)
        if given is not None:
            return given
        sample = getattr(self.obj, "sample", None)
        return list(sample) if isinstance(sample, list | tuple) else None

    def describe(self) -> dict[str, Any]:
        return {"inputs": [], "outputs": []}


def _takes_arg(method: Any) -> bool:
    import inspect

    try:
        return len(inspect.signature(method).parameters) >= 1
    except (TypeError, ValueError):
        return False


def load_model(path: Path, fmt: str, entry: str | None = None) -> LoadedModel:
    """Load a model directory of the given format. Raises LoadError with the reason."""
    problem = required_files(path, fmt, entry)
    if problem:
        raise LoadError(problem)
    if fmt == "sklearn":
        return SklearnModel(path)
    if fmt == "onnx":
        return OnnxModel(path)
    return PythonModel(path, entry)


def framework_versions() -> dict[str, str]:
    """The library versions a model is checked (and so saved) with."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("scikit-learn", "onnxruntime", "numpy", "joblib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
