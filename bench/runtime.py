"""Which CPU runtime serves the digits model fastest: numpy, scikit-learn or onnxruntime?

    python bench/runtime.py

Runs the same trained MLP through each runtime, side by side, for batch sizes 1 and 32, and
prints the time per call and the ratio to numpy. onnxruntime is measured when installed
(`pip install onnxruntime skl2onnx`).
"""

from __future__ import annotations

import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np

from inferwatch.models.digits import DigitsModel, heldout_digits, train_classifier


def best_of(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number


def main() -> None:
    model = DigitsModel(Path(tempfile.mkdtemp()))
    clf = train_classifier()
    data = heldout_digits()
    runtimes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "numpy": model.predict_proba,
        "sklearn": lambda x: clf.predict_proba(x.reshape(len(x), -1) / 16.0),
    }
    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx

        onx = to_onnx(clf, data.images[:1].reshape(1, -1).astype(np.float32) / 16.0,
                      options={id(clf): {"zipmap": False}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(onx.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def onnx_run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: x.reshape(len(x), -1) / np.float32(16.0)})[1]

        runtimes["onnxruntime"] = onnx_run
    except ImportError:
        print("onnxruntime/skl2onnx not installed: measuring numpy and sklearn only")

    for batch in (1, 32):
        x = data.images[:batch].astype(np.float32)
        reference = model.predict_proba(x)
        times = {}
        for runtime, fn in runtimes.items():
            assert np.allclose(fn(x), reference, atol=1e-4), runtime
            times[runtime] = best_of(lambda fn=fn, x=x: fn(x), 2000 if batch == 1 else 500)
        base = times["numpy"]
        print(f"batch {batch}: " + ", ".join(
            f"{k} {v * 1e6:.1f} us ({v / base:.2f}x numpy)" for k, v in times.items()))


if __name__ == "__main__":
    main()
