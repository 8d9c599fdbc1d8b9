"""Model runtime: load a model file, check it against the contract, run batches.

TorchScript lives here; ONNX Runtime in `agent.runtime_onnx`. Both implement `Runtime` and
share the checks below, and `load_runtime` picks one from `[model] runtime`. This is the only
agent module that imports torch (lazily), so the TorchScript dependency (and its deprecation
in torch 2.13) stays behind one interface, and an ONNX agent never imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.config import ModelConfig
from agent.errors import ModelError
from agent.spec import KNOWN_HEADS, METADATA_FILE, ModelSpec

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Outputs:
    """One batch of model outputs as numpy arrays (absent heads are None)."""

    forecast_mean: FloatArray | None = None
    forecast_logvar: FloatArray | None = None
    fail_prob: FloatArray | None = None
    rul: FloatArray | None = None
    anomaly_nll: FloatArray | None = None


def bucket(n: int) -> int:
    """The batch size a batch of `n` windows is padded to: 1, 2, 3, 4, 6, 8, 12, 16, 24, ...

    Each distinct input shape costs memory that is never given back (oneDNN caches a primitive
    per shape: ~0.5 MiB for the reference LSTM, ~120 MiB once every size up to 256 was seen,
    bench/soak.py). Powers of two and 1.5 times them keep the shapes to about 2 log2(max
    batch) for less than half again the compute on a padded batch, and none on a full one.
    """
    if n <= 2:
        return max(n, 1)
    p = 1 << (n - 1).bit_length()  # the power of two at or above n
    return p * 3 // 4 if n <= p * 3 // 4 else p


def padded(infer: Callable[[FloatArray], Outputs], x: FloatArray) -> Outputs:
    """`infer` on `x` padded with zero windows to its bucket; outputs cut back to `len(x)`."""
    n = len(x)
    size = bucket(n)
    if size == n:
        return infer(x)
    full = np.zeros((size, *x.shape[1:]), dtype=np.float32)
    full[:n] = x
    out = infer(full)
    return Outputs(**{f.name: None if (v := getattr(out, f.name)) is None else v[:n]
                      for f in dataclasses.fields(out)})


class Runtime(Protocol):
    """What the pipeline needs from a loaded model."""

    spec: ModelSpec
    sha256: str

    def infer(self, x: FloatArray) -> Outputs:
        """Run a normalised batch [B, W, C] and return its outputs."""
        ...


@dataclass(frozen=True)
class Expected:
    """What the config demands of a model file (None: anything goes)."""

    channels: tuple[str, ...] | None = None
    period_s: float | None = None
    sha256: str | None = None


def _torch() -> Any:
    # Imported on first use: `import torch` costs ~1.5 s and ~220 MiB, and check-config
    # or a future ONNX runtime should not pay it.
    import torch

    return torch


class TorchScriptRuntime:
    """A TorchScript model with its metadata, checked before it serves."""

    def __init__(self, module: object, spec: ModelSpec, sha256: str) -> None:
        self._module = module
        self.spec = spec
        self.sha256 = sha256

    def infer(self, x: FloatArray) -> Outputs:
        return padded(self._infer, x)

    def _infer(self, x: FloatArray) -> Outputs:
        torch = _torch()
        with torch.inference_mode():
            out = self._module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))  # type: ignore[operator]
        got = {k: v.numpy() for k, v in out.items()}
        return Outputs(**{k: got.get(k) for k in KNOWN_HEADS})


def load_runtime(model: ModelConfig, expected: Expected | None = None, *, probe: bool = True) -> Runtime:
    """The runtime `[model] runtime` names, loaded from `[model] path` and checked.

    The one entry point for start-up, hot-swap and check-config. `expected` adds what a
    swap must keep (channels, period); the pinned `[model] sha256` always applies.
    """
    exp = Expected(sha256=model.sha256) if expected is None else expected
    if exp.sha256 is None and model.sha256:
        exp = Expected(exp.channels, exp.period_s, model.sha256)
    if model.runtime == "onnx":
        from agent.runtime_onnx import load_onnx

        return load_onnx(model.path, exp, threads=model.threads, probe=probe)
    return load_model(model.path, exp, threads=model.threads, probe=probe)


def read_spec(path: Path) -> ModelSpec:
    """Read only the metadata of a model file (for inspect and check-config); `.onnx` or TorchScript."""
    if Path(path).suffix == ".onnx":
        from agent.runtime_onnx import load_onnx

        return load_onnx(path, probe=False).spec
    return load_model(path, probe=False).spec


def read_bytes(path: Path, expected: Expected) -> tuple[bytes, str]:
    """The file's bytes and sha256, checked against a pinned hash."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {path}: {exc.strerror or exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    if expected.sha256 and expected.sha256.lower() != sha:
        raise ModelError(f"model file {path}: sha256 {sha} does not match the pinned {expected.sha256}")
    return data, sha


def check_spec(path: Path, metadata: str | None, expected: Expected) -> ModelSpec:
    """Parse the metadata found in a model file and hold it against what the config expects."""
    if not metadata:
        raise ModelError(f"model file {path}: no Vigil metadata ({METADATA_FILE}) inside")
    spec = ModelSpec.from_json(metadata)
    if expected.channels is not None and tuple(expected.channels) != spec.channels:
        raise ModelError(f"model file {path}: channels {list(spec.channels)} do not match config "
                         f"{list(expected.channels)}")
    if expected.period_s is not None and abs(expected.period_s - spec.period_s) > 1e-9:
        raise ModelError(
            f"model file {path}: sample period {spec.period_s}s does not match config {expected.period_s}s")
    return spec


def load_model(path: Path, expected: Expected | None = None, *, threads: int = 1,
               probe: bool = True) -> TorchScriptRuntime:
    """Load, check and probe a model file; raise ModelError with a clear reason if unfit."""
    torch = _torch()
    torch.set_num_threads(threads)
    exp = expected or Expected()
    data, sha = read_bytes(path, exp)
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                    category=DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError and friends for any bad file
        raise ModelError(f"model file {path}: not a TorchScript file ({type(exc).__name__})") from exc
    spec = check_spec(path, extra[METADATA_FILE], exp)
    module.eval()
    rt = TorchScriptRuntime(module, spec, sha)
    if probe:
        probe_runtime(rt, path)
    return rt


def warm_up(rt: Runtime, max_batch: int, runs: int = 2) -> None:
    """Run a model once or twice on every batch size it will see (its buckets up to `max_batch`).

    TorchScript optimises a graph on its first calls with each input shape; on a model loaded
    while serving (a hot-swap, a new shadow) that happens here, on the thread that loaded it,
    not on the first live batches: otherwise they wait hundreds of milliseconds.
    """
    s = rt.spec
    for size in sorted({bucket(n) for n in range(1, max_batch + 1)}):
        x = np.zeros((size, s.window, s.n_channels), dtype=np.float32)
        for _ in range(runs):
            rt.infer(x)


def probe_runtime(rt: Runtime, path: Path) -> None:
    """A forward pass on a small batch must give finite outputs of the declared shapes."""
    s = rt.spec
    x = np.zeros((2, s.window, s.n_channels), dtype=np.float32)
    try:
        out = rt.infer(x)
    except Exception as exc:
        raise ModelError(f"model file {path}: forward pass failed: {exc}") from exc
    shapes = {"forecast_mean": (2, s.horizon, s.n_channels),
              "forecast_logvar": (2, s.horizon, s.n_channels), "fail_prob": (2,), "rul": (2,),
              "anomaly_nll": (2,)}
    for head in s.heads:
        arr = getattr(out, head)
        if arr is None:
            raise ModelError(f"model file {path}: declared head {head!r} missing from outputs")
        if arr.shape != shapes[head]:
            raise ModelError(f"model file {path}: head {head!r} has shape {arr.shape}, "
                             f"expected {shapes[head]}")
        if not np.isfinite(arr).all():
            raise ModelError(f"model file {path}: head {head!r} gives non-finite values")
