"""Export: TorchScript with the metadata inside, checked against the eager model."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from agent.errors import ModelError
from agent.spec import METADATA_FILE, ModelSpec
from training.model import Forecaster

PARITY_TOLERANCE = 1e-5


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The weights as bytes in a stable order (the input of the content-hash version)."""
    sd = model.state_dict()
    return b"".join(k.encode() + sd[k].detach().cpu().numpy().tobytes() for k in sorted(sd))


def export(model: Forecaster, spec: ModelSpec, probe: np.ndarray, path: Path) -> ModelSpec:
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
