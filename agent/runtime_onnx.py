"""ONNX Runtime: the same model contract as TorchScript, for small gateways; never imports torch.

`vigil-train fit --onnx` writes `model.onnx` beside the TorchScript file, with the same
metadata JSON (and so the same version) in the ONNX model's `metadata_props`. Without torch
the agent starts in about a second and needs ~150 MiB less memory (docs/performance.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ModelError
from agent.runtime import Expected, FloatArray, Outputs, check_spec, padded, probe_runtime, read_bytes
from agent.spec import KNOWN_HEADS, METADATA_FILE, ModelSpec


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError('[model] runtime = "onnx" needs onnxruntime: pip install "vigil[onnx]"') from exc
    return onnxruntime


class OnnxRuntime:
    """An ONNX Runtime session with the model's metadata, checked before it serves."""

    def __init__(self, session: Any, spec: ModelSpec, sha256: str) -> None:
        self._session = session
        self.spec = spec
        self.sha256 = sha256
        self._input = session.get_inputs()[0].name
        names = {o.name for o in session.get_outputs()}
        self._heads = [h for h in KNOWN_HEADS if h in names]

    def infer(self, x: FloatArray) -> Outputs:
        return padded(self._infer, x)

    def _infer(self, x: FloatArray) -> Outputs:
        got = self._session.run(self._heads, {self._input: np.ascontiguousarray(x, dtype=np.float32)})
        return Outputs(**dict(zip(self._heads, got, strict=True)))


def _session(data: bytes, threads: int, path: Path) -> Any:
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # A gateway shares its core with the MQTT thread: idle worker threads must sleep, not spin.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # ORT's own warnings go to stderr unformatted; errors still raise
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind classes for any bad file
        raise ModelError(f"model file {path}: not an ONNX model ({type(exc).__name__})") from exc


def load_onnx(path: Path, expected: Expected | None = None, *, threads: int = 1,
              probe: bool = True) -> OnnxRuntime:
    """Load, check and probe an ONNX model file; raise ModelError with a clear reason if unfit."""
    exp = expected or Expected()
    data, sha = read_bytes(path, exp)
    session = _session(data, threads, path)
    meta = None
    with contextlib.suppress(Exception):  # a model without metadata answers with an error or {}
        meta = session.get_modelmeta().custom_metadata_map.get(METADATA_FILE)
    spec = check_spec(path, meta, exp)
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 3:
        raise ModelError(f"model file {path}: expected one input [batch, window, channels], "
                         f"got {[i.shape for i in inputs]}")
    w, c = inputs[0].shape[1:]
    if (isinstance(w, int) and w != spec.window) or (isinstance(c, int) and c != spec.n_channels):
        raise ModelError(f"model file {path}: input shape {inputs[0].shape} does not fit window "
                         f"{spec.window} x {spec.n_channels} channels")
    rt = OnnxRuntime(session, spec, sha)
    if probe:
        probe_runtime(rt, path)
    return rt
