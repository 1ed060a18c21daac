"""This machine's measured GEMM peak (fp32 and int8) and the FLOP count of an encoder forward pass.

Why: a latency number alone does not say whether a system is near what the hardware can do. The peak
is measured here, with the same thread count as the benchmarks, never taken from a data sheet.

Semantics:
    GEMM  C[M, N] = A[M, K] @ B[K, N]                      ops = 2 * M * N * K
    peak  = max over the probed shapes of ops / median(time)
    fp32: numpy (its BLAS) and onnxruntime MatMul with B as a constant initializer (pre-packed)
    int8: onnxruntime MatMulInteger (A uint8, B int8 constant, int32 out), the kernel that ORT's
          dynamic quantization uses

    encoder forward FLOPs for B rows padded to S tokens (T = B * S), L layers, hidden H, FFN I,
    adapter bottleneck m at ``sites`` sites per adapted layer:
        dense     = 2 * T * (4 * H * H + 2 * H * I) * L          (Q, K, V, attention out, FFN in, FFN out)
        attention = 2 * B * 2 * S * S * H * L                    (Q K^T and softmax(..) V)
        adapters  = 2 * T * 2 * H * m * sites * adapted_layers
    Embeddings, LayerNorms, softmax, the head and padding masks are left out (< 1% at these sizes).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ModelShape", "PeakSystem", "encoder_flops"]


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs to know about an encoder and its adapters."""

    layers: int
    hidden: int
    intermediate: int
    bottleneck: int = 0
    adapter_sites: int = 0  # per adapted layer
    adapted_layers: int = 0

    def to_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


def encoder_flops(shape: ModelShape, batch: int, seq: int, *, adapters: bool = True) -> float:
    """FLOPs of one forward pass over ``batch`` rows padded to ``seq`` tokens (see module semantics)."""
    t = batch * seq
    h, i = shape.hidden, shape.intermediate
    dense = 2.0 * t * (4 * h * h + 2 * h * i) * shape.layers
    attention = 2.0 * batch * 2 * seq * seq * h * shape.layers
    adapter = 2.0 * t * 2 * h * shape.bottleneck * shape.adapter_sites * shape.adapted_layers if adapters else 0.0
    return dense + attention + adapter


def _time(fn: Any, min_time: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _matmul_graph(k: int, n: int, int8: bool, rng: np.random.Generator) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if int8:
        b = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["C"])
        inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zp")]
        a_type, c_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["C"])
        inits = [numpy_helper.from_array(b, "B")]
        a_type, c_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, ["M", k])],
        [helper.make_tensor_value_info("C", c_type, ["M", n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


class PeakSystem:
    """Runs inside a worker so that the thread count is fixed before numpy / onnxruntime load."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        self.threads = threads
        self.min_time = float(spec.get("min_time", 0.5))
        self.shapes = [tuple(s) for s in spec["shapes"]]

    def measure(self) -> dict[str, Any]:
        """GFLOP/s (GOP/s for int8) per shape and backend; ``peak`` = the best per precision."""
        import onnxruntime as ort

        rng = np.random.default_rng(0)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        rows = []
        for m, k, n in self.shapes:
            ops = 2.0 * m * n * k
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            out = np.empty((m, n), dtype=np.float32)
            t = _time(lambda a=a, b=b, out=out: np.matmul(a, b, out=out), self.min_time)
            rows.append({"backend": "numpy", "precision": "fp32", "shape": [m, k, n], "gflops": ops / t / 1e9})
            for int8 in (False, True):
                sess = ort.InferenceSession(_matmul_graph(k, n, int8, rng), so, providers=["CPUExecutionProvider"])
                feed = {"A": rng.integers(0, 256, size=(m, k), dtype=np.uint8) if int8 else a}
                t = _time(lambda sess=sess, feed=feed: sess.run(None, feed), self.min_time)
                rows.append(
                    {
                        "backend": "onnxruntime",
                        "precision": "int8" if int8 else "fp32",
                        "shape": [m, k, n],
                        "gflops": ops / t / 1e9,
                    }
                )
        peak = {p: max(r["gflops"] for r in rows if r["precision"] == p) for p in ("fp32", "int8")}
        return {
            "rows": rows,
            "peak_gflops": peak,
            "threads": self.threads,
            "numpy": np.__version__,
            "onnxruntime": ort.__version__,
        }
