"""The ONNX runtime: export parity, same outputs as TorchScript, refusals, and no torch in the agent."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from agent.config import ModelConfig as ModelSection
from agent.errors import ModelError
from agent.names import BrokerURL
from agent.runtime import Expected, load_model, load_runtime, read_spec
from agent.runtime_onnx import OnnxRuntime, load_onnx
from agent.spec import METADATA_FILE
from sim.publisher import Publisher, PublisherOptions
from tests.agent.conftest import CHANNELS, WINDOW, make_spec
from tests.broker import Broker, free_port, wait_until
from tests.perf.conftest import Pair, probe_windows, tiny_model
from tests.procs import Capture, cli, running_agent, write_agent_config
from training import export as export_mod
from training.export import export, export_onnx, export_onnx_beside


class TestExport:
    def test_metadata_is_the_torchscript_metadata(self, pair: Pair) -> None:
        """The ONNX file carries the same spec JSON, with the same content-hash version."""
        props = {p.key: p.value for p in onnx.load(str(pair.onnx)).metadata_props}
        assert props[METADATA_FILE] == read_spec(pair.pt).to_json()
        assert read_spec(pair.onnx) == read_spec(pair.pt)

    def test_batch_axis_is_dynamic(self, pair: Pair) -> None:
        """Exported on a batch of 4, the file runs batches of 1 and 300."""
        rt = load_onnx(pair.onnx)
        for b in (1, 300):
            out = rt.infer(np.zeros((b, WINDOW, len(CHANNELS)), dtype=np.float32))
            assert out.fail_prob is not None and out.fail_prob.shape == (b,)

    def test_parity_failure_refuses_to_write(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An output further than the tolerance from eager raises ModelError and writes nothing."""
        monkeypatch.setattr(export_mod, "PARITY_TOLERANCE", -1.0)
        with pytest.raises(ModelError, match=r"ONNX output .* differs from eager"):
            export_onnx(tiny_model(), make_spec(), probe_windows(), tmp_path / "m.onnx")
        assert not (tmp_path / "m.onnx").exists()

    @pytest.mark.parametrize("kw", [{"cell": "gru"}, {"cell": "rnn"},
                                    {"rul_head": True, "head_hidden": 4, "rul_cap": 50.0},
                                    {"forecast_head": False},
                                    {"encoder": "trend", "window": WINDOW, "rul_head": True, "dropout": 0.2}])
    def test_rebuilt_from_torchscript(self, tmp_path: Path, kw: dict[str, object]) -> None:
        """`export_onnx_beside` rebuilds the eager model from a .pt file (other cells and heads too)
        and writes a .onnx with the same version whose outputs match the TorchScript file's."""
        model = tiny_model(**kw)
        heads = tuple(model(torch.from_numpy(probe_windows())).keys())
        spec = dataclasses.replace(make_spec(), heads=heads, rul_cap=50.0 if "rul" in heads else 0.0)
        pt = tmp_path / "m.pt"
        export(model, spec, probe_windows(), pt)
        out, onnx_spec = export_onnx_beside(pt)
        assert out == tmp_path / "m.onnx" and onnx_spec.version == read_spec(pt).version
        x = probe_windows(16)
        a, b = load_model(pt).infer(x), load_onnx(out).infer(x)
        for head in heads:
            np.testing.assert_allclose(getattr(b, head), getattr(a, head), atol=1e-5)


class TestOnnxRuntime:
    def test_matches_torchscript_on_the_same_windows(self, pair: Pair) -> None:
        """Every head agrees with the TorchScript runtime within 1e-5, at several batch sizes."""
        ts, ox = load_model(pair.pt), load_onnx(pair.onnx)
        assert isinstance(ox, OnnxRuntime) and ox.spec == ts.spec and ox.sha256 != ts.sha256
        rng = np.random.default_rng(7)
        for b in (1, 8, 64, 256):
            x = rng.normal(size=(b, WINDOW, len(CHANNELS))).astype(np.float32)
            a, o = ts.infer(x), ox.infer(x)
            for head in ts.spec.heads:
                np.testing.assert_allclose(getattr(o, head), getattr(a, head), atol=1e-5)

    def test_load_runtime_picks_onnx_from_config(self, pair: Pair) -> None:
        """`[model] runtime = "onnx"` loads through the one entry point; the default is TorchScript."""
        assert isinstance(load_runtime(ModelSection(path=pair.onnx, runtime="onnx")), OnnxRuntime)
        assert not isinstance(load_runtime(ModelSection(path=pair.pt)), OnnxRuntime)

    def test_garbage_file_refused(self, tmp_path: Path) -> None:
        """A file that is not ONNX is refused with a clear reason, as a bad TorchScript file is."""
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x00not a model" * 100)
        with pytest.raises(ModelError, match="not an ONNX model"):
            load_onnx(bad)
        with pytest.raises(ModelError, match="not a TorchScript file"):
            load_model(bad)

    def test_missing_metadata_refused(self, pair: Pair, tmp_path: Path) -> None:
        """An ONNX file without Vigil metadata is refused."""
        m = onnx.load(str(pair.onnx))
        del m.metadata_props[:]
        path = tmp_path / "bare.onnx"
        onnx.save(m, str(path))
        with pytest.raises(ModelError, match="no Vigil metadata"):
            load_onnx(path)

    def test_mismatches_refused(self, pair: Pair) -> None:
        """Other channels, another period or a different pinned hash are refused."""
        with pytest.raises(ModelError, match="channels"):
            load_onnx(pair.onnx, Expected(channels=("a", "b", "c")))
        with pytest.raises(ModelError, match="sample period"):
            load_onnx(pair.onnx, Expected(period_s=99.0))
        with pytest.raises(ModelError, match="sha256"):
            load_runtime(ModelSection(path=pair.onnx, runtime="onnx", sha256="0" * 64))

    def test_nan_outputs_refused(self, pair: Pair, tmp_path: Path) -> None:
        """A file whose probe gives NaN is refused before it could serve."""
        m = onnx.load(str(pair.onnx))
        for init in m.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT and "fail" in init.name:
                arr = onnx.numpy_helper.to_array(init).copy()
                arr.fill(np.nan)
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        path = tmp_path / "nan.onnx"
        onnx.save(m, str(path))
        with pytest.raises(ModelError, match="non-finite"):
            load_onnx(path)

    def test_check_config_reports_a_bad_onnx_file(self, pair: Pair, tmp_path: Path) -> None:
        """`vigil-agent check-config` loads the ONNX file, and exits 2 with one line on a bad one."""
        cfg = write_agent_config(tmp_path / "a.toml", broker_url="mqtt://127.0.0.1:1", model=pair.onnx,
                                 state=tmp_path / "s", http_port=0, extra="")
        text = cfg.read_text().replace('watch_interval_s = 0.5', 'watch_interval_s = 0.5\nruntime = "onnx"')
        cfg.write_text(text)
        ok = cli("vigil-agent", "check-config", str(cfg))
        assert json.loads(ok.stdout)["model"]["version"] == read_spec(pair.onnx).version
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"garbage")
        cfg.write_text(text.replace(str(pair.onnx), str(bad)))
        res = cli("vigil-agent", "check-config", str(cfg), check=False)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not an ONNX model" in res.stderr


NO_TORCH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from agent.config import load_config
    from agent.app import Agent
    cfg = load_config(Path(sys.argv[1]))
    agent = Agent(cfg)
    t0 = 1_767_225_600.0
    for k in range(12):
        for i, ch in enumerate(("temp", "vib", "press")):
            agent.pipeline.ingest(0, f"plant/pump-1/{ch}", b'{"ts": %f, "value": %d}' % (t0 + 10 * k + 1, i),
                                  time.time(), time.monotonic())
    risks = agent.pipeline.run_batch(64).risks
    print(len(risks), "torch" in sys.modules, any(m.startswith("torch") for m in sys.modules))
""")


def test_agent_with_onnx_never_imports_torch(pair: Pair, tmp_path: Path) -> None:
    """An agent configured for ONNX builds, loads its model and scores windows without torch."""
    cfg = write_agent_config(tmp_path / "a.toml", broker_url="mqtt://127.0.0.1:1", model=pair.onnx,
                             state=tmp_path / "s", http_port=0)
    cfg.write_text(cfg.read_text().replace("watch_interval_s = 0.5",
                                           'watch_interval_s = 0.5\nruntime = "onnx"'))
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(cfg)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].split() == ["5", "False", "False"]


@pytest.mark.integration
def test_agent_runs_end_to_end_on_onnx(pair: Pair, broker: Broker, tmp_path: Path) -> None:
    """`vigil-agent run` with runtime = "onnx" scores windows through the broker, publishes risk,
    and its process never maps libtorch."""
    port = free_port()
    cfg = write_agent_config(tmp_path / "a.toml", broker_url=broker.url, model=pair.onnx,
                             state=tmp_path / "state", http_port=port, client_id="gw-onnx")
    cfg.write_text(cfg.read_text()
                   .replace('watch_interval_s = 0.5', 'watch_interval_s = 0.5\nruntime = "onnx"')
                   .replace('"plant/+/+"', '"onnxe2e/+/+"').replace('"plant/{asset}', '"onnxe2e/{asset}'))
    capture = Capture(broker.port, ["vigil/risk/onnx-pump"]).start()

    t0 = time.time() - 600
    with running_agent(cfg, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        with Publisher(PublisherOptions(BrokerURL.parse(broker.url), "onnx-pub")) as pub:
            for k in range(WINDOW + 3):
                for i, ch in enumerate(CHANNELS):
                    pub.publish(f"onnxe2e/onnx-pump/{ch}",
                                json.dumps({"ts": t0 + 10 * k + 1, "value": 0.1 * i}).encode())
            assert pub.drain(10)
        wait_until(lambda: len(capture.json("vigil/risk/")) >= 3, 30, what="risk messages")
        maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()  # type: ignore[union-attr]
        assert agent.terminate() == 0
    capture.stop()
    doc = capture.json("vigil/risk/")[-1]
    assert doc["model_version"] == read_spec(pair.onnx).version and 0.0 <= doc["risk"] <= 1.0
    assert "onnxruntime" in maps and "libtorch" not in maps


@pytest.mark.integration
def test_fit_onnx_writes_both_files(tmp_path: Path) -> None:
    """`vigil-train fit --onnx` writes model.onnx beside model.pt with the same version."""
    cli("vigil-sim", "history", "--assets", "3", "--days", "2", "--seed", "3", "--out", str(tmp_path))
    res = cli("vigil-train", "fit", "--history", str(tmp_path / "history.csv"), "--epochs", "1",
              "--windows-per-epoch", "500", "--hidden", "8", "--quiet", "--onnx",
              "--out", str(tmp_path / "model.pt"))
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["onnx"] == str(tmp_path / "model.onnx")
    assert read_spec(tmp_path / "model.onnx").version == summary["version"] == read_spec(
        tmp_path / "model.pt").version
