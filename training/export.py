"""Export: TorchScript with the metadata inside, checked against the eager model."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.errors import ModelError
from agent.spec import METADATA_FILE, ModelSpec
from training.model import Forecaster, ModelConfig
from training.vae import LstmVae, VaeConfig, WithAnomaly

PARITY_TOLERANCE = 1e-5


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The weights as bytes in a stable order (the input of the content-hash version)."""
    sd = model.state_dict()
    return b"".join(k.encode() + sd[k].detach().cpu().numpy().tobytes() for k in sorted(sd))


def export(model: torch.nn.Module, spec: ModelSpec, probe: np.ndarray, path: Path) -> ModelSpec:
    """Script the model, check it matches eager on `probe`, and write it with its metadata.

    Returns the spec with its content-hash version. Raises ModelError if outputs differ.
    """
    model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated",
                                category=DeprecationWarning)
        scripted = torch.jit.script(model)
        x = torch.from_numpy(np.ascontiguousarray(probe, dtype=np.float32))
        with torch.no_grad():
            eager = model(x)
            script = scripted(x)
        for key, val in eager.items():
            diff = float((val - script[key]).abs().max())
            if not diff <= PARITY_TOLERANCE:
                raise ModelError(f"export: TorchScript output {key!r} differs from eager by {diff:.2e}")
        spec = spec.with_version(weights_bytes(model))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={METADATA_FILE: spec.to_json()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)  # atomic, so an agent watching the path never sees half a file
    return spec


ONNX_OPSET = 18


def export_onnx(model: torch.nn.Module, spec: ModelSpec, probe: np.ndarray, path: Path) -> ModelSpec:
    """Export the same model to ONNX (dynamic batch axis), checked against eager, metadata inside.

    The metadata is the same JSON as in the TorchScript file, stored in the ONNX model's
    `metadata_props` under `vigil.json`, with the same content-hash version: one model, two
    formats. Outputs are compared with the eager model on `probe` and on its first window alone
    (batch 1, so the dynamic batch axis is exercised) through ONNX Runtime; a difference above
    1e-5 raises ModelError. Needs the `onnx` extra (onnx, onnxscript, onnxruntime).
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelError("export: ONNX needs the optional dependencies: pip install 'vigil[onnx]'") from exc
    import logging

    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(probe, dtype=np.float32))
    with torch.no_grad():
        names = list(model(x).keys())
    # torch.export (the exporter behind torch.onnx.export since torch 2.9) warns freely
    # about its own internals; none of it concerns this model.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (x,), None, dynamo=True, opset_version=ONNX_OPSET, input_names=["x"],
                output_names=names, verbose=False,
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65_536)}})
    except Exception as exc:  # the exporter raises many kinds; all mean "not exportable"
        raise ModelError(f"export: ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        quiet.setLevel(level)
    assert program is not None
    proto = program.model_proto
    spec = spec.with_version(weights_bytes(model))
    onnx.helper.set_model_props(proto, {METADATA_FILE: spec.to_json()})
    data = proto.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    for batch in (x, x[:1]):
        with torch.no_grad():
            eager = model(batch)
        got = dict(zip(names, session.run(names, {"x": batch.numpy()}), strict=True))
        for key, val in eager.items():
            diff = float(np.abs(val.numpy() - got[key]).max())
            if not diff <= PARITY_TOLERANCE:
                raise ModelError(f"export: ONNX output {key!r} differs from eager by {diff:.2e}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return spec


def rebuild(path: Path) -> tuple[Forecaster | WithAnomaly, ModelSpec]:
    """The eager model and spec of a TorchScript model file: its weights in a fresh Forecaster
    (inside a `WithAnomaly` beside a fresh LSTM-VAE when the file has the anomaly head).

    The constructor arguments are read back from the weights' shapes and the scripted
    attributes; the rebuilt model is checked to give the scripted model's outputs.
    """
    from agent.runtime import load_model

    rt = load_model(path, probe=False)
    scripted: Any = rt._module
    sd = {k: v for k, v in scripted.state_dict().items()}
    if any(k.startswith(("members.", "base.members.")) for k in sd):
        raise ModelError(f"{path}: an ensemble model file cannot be rebuilt as one Forecaster")
    model: Forecaster | WithAnomaly
    n = rt.spec.n_channels
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if any(k.startswith("vae.") for k in sd):
            base = Forecaster(_forecaster_config(scripted.base, _under(sd, "base."), n))
            vae = LstmVae(VaeConfig(n_channels=n, hidden=int(sd["vae.encoder.weight_hh_l0"].shape[1]),
                                    latent=int(sd["vae.to_state.weight"].shape[1])))
            model = WithAnomaly(base, vae)
        else:
            model = Forecaster(_forecaster_config(scripted, sd, n))
    model.load_state_dict(sd)
    model.eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, rt.spec.window, n)).astype(np.float32))
    with torch.no_grad():
        eager, script = model(x), scripted(x)
    for key, val in eager.items():
        diff = float((val - script[key]).abs().max())
        if not diff <= PARITY_TOLERANCE:
            raise ModelError(f"{path}: rebuilt model differs from the scripted one on {key!r} by {diff:.2e}")
    return model, rt.spec


def _under(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _forecaster_config(scripted: Any, sd: dict[str, torch.Tensor], n_channels: int) -> ModelConfig:
    """A scripted Forecaster's constructor arguments, from its attributes and weight shapes."""
    heads: dict[str, Any] = dict(
        n_channels=n_channels, horizon=int(scripted.horizon), fail_head=bool(scripted.has_fail),
        forecast_head=bool(scripted.has_forecast), rul_head=bool(scripted.has_rul),
        rul_cap=float(scripted.rul_cap), smooth=float(getattr(scripted, "smooth", 0.0)),
        head_hidden=int(sd["rul_hidden.weight"].shape[0]) if scripted.rul_mlp else 0,
        min_logvar=float(getattr(scripted, "min_logvar", -8.0)),
        delta=bool(getattr(scripted, "delta", False)))
    if "trend.basis" in sd:
        return ModelConfig(**heads, hidden=int(sd["trend.out.weight"].shape[0]), encoder="trend",
                           window=int(sd["trend.basis"].shape[0]))
    hidden = int(sd["lstm.weight_hh_l0"].shape[1])
    gates = int(sd["lstm.weight_ih_l0"].shape[0]) // hidden
    return ModelConfig(
        **heads, hidden=hidden, cell={4: "lstm", 3: "gru", 1: "rnn"}[gates],
        layers=sum(1 for k in sd if k.startswith("lstm.weight_ih_l") and not k.endswith("_reverse")),
        pool="attention" if bool(getattr(scripted, "attention", False)) else "last")


def export_onnx_beside(path: Path, probe_size: int = 64) -> tuple[Path, ModelSpec]:
    """Write `path` (a TorchScript model file) again as ONNX, same name with `.onnx`, same version.

    The parity probe is a batch of normalised windows drawn from N(0, 1) with a fixed seed:
    the model's input space, since normalisation happens before the model.
    """
    model, spec = rebuild(path)
    probe = np.random.default_rng(1).normal(size=(probe_size, spec.window, spec.n_channels))
    out = Path(path).with_suffix(".onnx")
    onnx_spec = export_onnx(model, spec, probe.astype(np.float32), out)
    if onnx_spec.version != spec.version:  # same weights, same metadata: must be the same version
        raise ModelError(f"export: ONNX version {onnx_spec.version} differs from {spec.version}")
    return out, onnx_spec
