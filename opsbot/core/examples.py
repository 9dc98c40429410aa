"""Example models, so a newcomer can deploy at once: iris, from the data scikit-learn ships.

- ``iris`` 1.0.0: logistic regression (scikit-learn, joblib)
- ``iris`` 2.0.0: a decision tree (scikit-learn, joblib): a different estimator, for gated launch
- ``iris-onnx`` 1.0.0: the same logistic regression converted to ONNX
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@dataclass(frozen=True)
class Example:
    name: str
    version: str
    format: str
    description: str


EXAMPLES = (
    Example("iris", "1.0.0", "sklearn", "Iris species, logistic regression"),
    Example("iris", "2.0.0", "sklearn", "Iris species, decision tree"),
    Example("iris-onnx", "1.0.0", "onnx", "Iris species, logistic regression in ONNX"),
)


def train(version: str) -> Any:
    """The estimator behind an example version, trained on scikit-learn's bundled iris data."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    if version == "1.0.0":
        return LogisticRegression(max_iter=1000).fit(x, y)
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)


def write_example(example: Example, directory: Path) -> Path:
    """Write one example's model files (and sample.json) into directory."""
    import joblib

    directory.mkdir(parents=True, exist_ok=True)
    estimator = train(example.version)
    if example.format == "sklearn":
        joblib.dump(estimator, directory / "model.joblib")
    else:
        import numpy as np
        from skl2onnx import to_onnx

        onx = to_onnx(
            estimator,
            np.asarray(SAMPLE_ROWS, dtype=np.float32),
            options={id(estimator): {"zipmap": False}},
            target_opset=17,
        )
        (directory / "model.onnx").write_bytes(onx.SerializeToString())
    (directory / "sample.json").write_text(json.dumps({"instances": SAMPLE_ROWS}))
    return directory


def build_all(target: Path | None = None) -> list[tuple[Example, Path]]:
    """Write every example into folders under target (a new temporary folder by default)."""
    root = target or Path(tempfile.mkdtemp(prefix="opsbot-examples-"))
    return [(ex, write_example(ex, root / f"{ex.name}-{ex.version}")) for ex in EXAMPLES]
