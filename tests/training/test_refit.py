"""`vigil-train refit`: the first model from an agent's recording, candidates judged before they serve.

The state directory is built as the agent leaves it: its recording (Parquet, long format, one
folder per UTC day, as `agent.recorder` writes it) and `events.csv`. The recording grows: a
first model is fitted on the first five days of a simulated plant, then three more days arrive,
with failures and maintenance among them, and refits are judged on them. Every command runs as
the agent (or a timer) would run it: the real `vigil-train` process.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import shutil
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from agent.runtime import load_model
from tests.broker import wait_until
from tests.procs import BIN
from training.judge import rules
from training.refit import EXIT_ACCEPTED, EXIT_BUSY, EXIT_FAILED, EXIT_REFUSED

DAY = 86_400.0
FIRST_DAYS = 5  # the first model learns from these; refits hold out what came after
TINY = ["--window", "12", "--horizon", "2", "--fail-horizon", "720", "--hidden", "8", "--epochs", "2",
        "--windows-per-epoch", "3000", "--seed", "0"]


# -- building state directories --------------------------------------------------------------


def write_recording(directory: Path, table: pa.Table) -> None:
    """Readings in the recorder's layout: dir/YYYY-MM-DD/part-<stamp>Z-NNNNNN.parquet, ts as float."""
    ts = table["ts"].to_numpy().astype(np.float64)
    day = (ts // DAY).astype(np.int64)
    for seq, d in enumerate(np.unique(day), start=1):
        rows = np.flatnonzero(day == d)
        part = table.take(pa.array(rows)).set_column(0, "ts", pa.array(ts[rows]))
        opened = datetime.fromtimestamp(float(d) * DAY, UTC)
        folder = directory / f"{opened:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{opened:%Y%m%dT%H%M%S.%f}Z-{seq:06d}.parquet"
        pq.write_table(part, folder / name, compression="zstd", store_schema=False)


def write_events(path: Path, rows: list[dict[str, str]]) -> None:
    """The agent's events.csv: the training columns and the CMMS event beside them."""
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ts", "asset", "event", "cmms_event", "work_order"])
        w.writerows([r["ts"], r["asset"], r["event"], "failure" if r["event"] == "failure" else "repair", ""]
                    for r in rows)


def make_state(root: Path, history: pa.Table, events: list[dict[str, str]], until: float) -> Path:
    """A state directory holding the readings and events before `until`."""
    state = root / "state"
    state.mkdir(parents=True)
    ts = history["ts"].to_numpy().astype(np.float64)
    write_recording(state / "recording", history.filter(pa.array(ts < until)))
    write_events(state / "events.csv", [e for e in events if float(e["ts"]) < until])
    return state


def grow(state: Path, history: pa.Table, events: list[dict[str, str]], since: float) -> None:
    """The agent kept recording: readings and events from `since` on join the state directory."""
    ts = history["ts"].to_numpy().astype(np.float64)
    later = history.filter(pa.array(ts >= since))
    write_recording(state / "recording", later)
    with (state / "events.csv").open("a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerows([e["ts"], e["asset"], e["event"], "", ""] for e in events if float(e["ts"]) >= since)


def refit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "vigil-train"), "refit", *args], capture_output=True, text=True,
                          timeout=timeout)


def decisions(state: Path) -> list[dict[str, Any]]:
    path = state / "models" / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def leftovers(state: Path) -> list[str]:
    """Anything of a refit in models/ that is not a finished result."""
    models = state / "models"
    return sorted(p.name for p in models.rglob("*") if p.name.startswith(".") and p.name != ".refit.lock")


@pytest.fixture(scope="module")
def plant(small_history: tuple[Path, Path]) -> tuple[pa.Table, list[dict[str, str]], float]:
    """The simulated plant's readings and events, and the time the first five days end."""
    table = pacsv.read_csv(small_history[0])
    with small_history[1].open() as f:
        events = list(csv.DictReader(f))
    start = float(pa.compute.min(table["ts"]).as_py())
    return table, events, start + FIRST_DAYS * DAY


@pytest.fixture(scope="module")
def first(plant: tuple[pa.Table, list[dict[str, str]], float], tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A state directory of five days and the first model fitted from it (`--first`)."""
    table, events, until = plant
    state = make_state(tmp_path_factory.mktemp("first"), table, events, until)
    proc = refit("--state", str(state), "--first", "--out", str(state / "model.pt"), "--quiet", *TINY)
    return state, proc


def copy_state(state: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "state"
    shutil.copytree(state, dest)
    # fit.json names the live model by its absolute path: point it at the copy's.
    fit = json.loads((dest / "models" / "fit.json").read_text())
    fit["model"] = str(dest / "model.pt")
    (dest / "models" / "fit.json").write_text(json.dumps(fit))
    return dest


def holdout_since(plant: tuple[pa.Table, list[dict[str, str]], float]) -> str:
    """--holdout reaching back exactly to where the first model's recording ended."""
    table, _, until = plant
    end = float(pa.compute.max(table["ts"]).as_py())
    return f"{end - until:.0f}s"


def corrupt(table: pa.Table, until: float, factor: float) -> pa.Table:
    """The readings before `until` scaled by `factor`, as a miscalibrated sensor or a unit change
    would leave them; what came after is as it was."""
    ts = table["ts"].to_numpy().astype(np.float64)
    values = table["value"].to_numpy().copy()
    values[ts < until] *= factor
    return table.set_column(3, "value", pa.array(values))


def png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the first model -------------------------------------------------------------------------


def test_first_fit_from_the_recording(first: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """--first fits on the whole recording and its events; the file loads in the agent's runtime;
    fit.json keeps the options for later refits; the decision is recorded and printed."""
    state, proc = first
    assert proc.returncode == EXIT_ACCEPTED, proc.stderr
    rt = load_model(state / "model.pt")
    assert rt.spec.window == 12 and rt.spec.fail_horizon == 720 and "fail_prob" in rt.spec.heads
    fit = json.loads((state / "models" / "fit.json").read_text())
    assert fit["model"] == str((state / "model.pt").resolve()) and fit["version"] == rt.spec.version
    assert fit["options"]["hidden"] == 8 and fit["options"]["epochs"] == 2
    assert fit["options"]["channels"] == list(rt.spec.channels) and fit["options"]["period_s"] == 60.0
    [d] = decisions(state)
    assert json.loads(proc.stdout.strip()) == d
    assert d["kind"] == "first" and d["result"] == "accepted" and d["version"] == rt.spec.version
    assert d["installed"] == str(state / "model.pt") and d["wall_s"] > 0 and d["peak_rss_mib"] > 50
    assert Path(d["report"]).is_file() and png(Path(d["report"]).parent / "risk_timelines.png")
    assert leftovers(state) == []


def test_first_fit_never_replaces_a_model(first: tuple[Path, subprocess.CompletedProcess[str]],
                                          tmp_path: Path) -> None:
    """A second --first onto an existing model fails, names why, and leaves the file as it was."""
    state = copy_state(first[0], tmp_path)
    before = (state / "model.pt").read_bytes()
    proc = refit("--state", str(state), "--first", "--out", str(state / "model.pt"), "--quiet", *TINY)
    assert proc.returncode == EXIT_FAILED
    assert "exists" in proc.stderr and proc.stderr.count("\n") == 1
    assert (state / "model.pt").read_bytes() == before
    assert decisions(state)[-1]["result"] == "failed"


# -- refits ----------------------------------------------------------------------------------


def test_refit_not_worse_becomes_the_shadow(first: tuple[Path, subprocess.CompletedProcess[str]],
                                           plant: tuple[pa.Table, list[dict[str, str]], float],
                                           tmp_path: Path) -> None:
    """Three more days with failures and maintenance arrive. A refit asked to hold out 90 % of the
    recording holds out only what the live model never saw (the three days), so it trains on what
    the live model learnt from, with its options (fit.json): the judge finds it not worse, and it
    is kept, reported and installed as shadow.pt; the live model is untouched."""
    table, events, until = plant
    state = copy_state(first[0], tmp_path)
    grow(state, table, events, until)
    live = (state / "model.pt").read_bytes()
    proc = refit("--state", str(state), "--holdout", "0.9", "--quiet")
    assert proc.returncode == EXIT_ACCEPTED, proc.stderr
    d = json.loads(proc.stdout.strip())
    assert d == decisions(state)[-1] and d["kind"] == "candidate" and d["result"] == "accepted"
    shadow = state / "models" / "shadow.pt"
    assert d["installed"] == str(shadow) and shadow.read_bytes() == Path(d["candidate"]).read_bytes()
    assert load_model(shadow).spec.version == d["version"]
    assert (state / "model.pt").read_bytes() == live
    held = d["metrics"]["live"]
    assert held["failures"] >= 1 and held["maintenance"] >= 1 and held["failures_caught"] >= 1
    assert d["metrics"]["candidate"] == held  # the same learning, judged the same way
    assert all(r["passed"] for r in d["rules"]) and len(d["rules"]) == 5
    assert abs(datetime.fromisoformat(d["holdout"]["from"]).timestamp() - until) <= 60
    assert d["trained_until"] == d["holdout"]["from"]
    report = Path(d["report"])
    assert "**accepted**" in report.read_text() and png(report.parent / "risk.png")
    assert leftovers(state) == []


def test_candidate_from_corrupted_data_is_refused(first: tuple[Path, subprocess.CompletedProcess[str]],
                                                  plant: tuple[pa.Table, list[dict[str, str]], float],
                                                  tmp_path: Path) -> None:
    """The recording's older part read half its true values (a sensor or unit fault): the candidate
    learns that as normal and alarms on the true readings held out. It is refused, says why, and
    neither the shadow model in place nor the live model changes."""
    table, events, until = plant
    state = copy_state(first[0], tmp_path)
    shutil.rmtree(state / "recording")
    write_recording(state / "recording", corrupt(table, until, 0.5))
    write_events(state / "events.csv", events)
    shadow = state / "models" / "shadow.pt"
    shutil.copyfile(state / "model.pt", shadow)  # an earlier accepted candidate
    live, earlier = (state / "model.pt").read_bytes(), shadow.read_bytes()
    proc = refit("--state", str(state), "--holdout", holdout_since(plant), "--quiet")
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    assert proc.stderr.startswith("vigil-train: refit refused: worse than the live model")
    assert "false alarms per asset-day" in proc.stderr and proc.stderr.count("\n") == 1
    d = decisions(state)[-1]
    assert d["result"] == "refused" and d["installed"] is None and Path(d["candidate"]).is_file()
    m = d["metrics"]
    assert m["candidate"]["false_alarms_per_asset_day"] > m["live"]["false_alarms_per_asset_day"] + 0.5
    assert m["candidate"]["alarm_share"] > 0.05
    assert {r["name"] for r in d["rules"] if not r["passed"]} >= {"false_alarms_per_asset_day", "alarm_share"}
    assert shadow.read_bytes() == earlier and (state / "model.pt").read_bytes() == live
    assert "**refused**" in Path(d["report"]).read_text()
    assert leftovers(state) == []


def test_a_refit_never_judges_on_what_the_live_model_learnt_from(
        first: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """Right after the first fit there is nothing the live model has not seen: the refit fails,
    saying so, before any training (its held-out part would flatter the live model)."""
    state = copy_state(first[0], tmp_path)
    proc = refit("--state", str(state), "--quiet")
    assert proc.returncode == EXIT_FAILED
    assert proc.stderr.startswith("vigil-train: refit failed: too little new history: the live model learnt "
                                  "from readings up to")
    assert decisions(state)[-1]["result"] == "failed" and not list((state / "models").glob("candidate-*"))


def test_too_little_history_fails_and_installs_nothing(
        first: tuple[Path, subprocess.CompletedProcess[str]],
        plant: tuple[pa.Table, list[dict[str, str]], float], tmp_path: Path) -> None:
    """Twenty minutes of recording: neither a refit nor a first fit can learn from it. Each exits
    with the failed status and a one-line reason; nothing is installed or kept."""
    table, events, _ = plant
    start = float(pa.compute.min(table["ts"]).as_py())
    state = make_state(tmp_path, table, events, start + 20 * 60)
    proc = refit("--state", str(state), "--live", str(first[0] / "model.pt"), "--quiet")
    assert proc.returncode == EXIT_FAILED
    assert proc.stderr.startswith("vigil-train: refit failed: too little history")
    assert proc.stderr.count("\n") == 1
    out = state / "model.pt"
    proc = refit("--state", str(state), "--first", "--out", str(out), "--quiet", *TINY)
    assert proc.returncode == EXIT_FAILED and proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists() and not (state / "models" / "fit.json").exists()
    assert [d["result"] for d in decisions(state)] == ["failed", "failed"]
    assert not list((state / "models").glob("*.pt")) and leftovers(state) == []


def test_kill_9_mid_training_leaves_nothing_a_later_run_takes(
        first: tuple[Path, subprocess.CompletedProcess[str]],
        plant: tuple[pa.Table, list[dict[str, str]], float], tmp_path: Path) -> None:
    """A refit killed outright while it trains leaves no shadow model, no candidate and no
    decision, only its hidden work folder; the next refit removes that and succeeds."""
    table, events, until = plant
    state = copy_state(first[0], tmp_path)
    grow(state, table, events, until)
    log = tmp_path / "refit.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(BIN / "vigil-train"), "refit", "--state", str(state), "--holdout",
                                 holdout_since(plant), "--epochs", "200", "--patience", "200"],
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: "epoch 1/200" in log.read_text(), 120, what="the refit training")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    models = state / "models"
    assert not (models / "shadow.pt").exists() and not list(models.glob("candidate-*"))
    assert decisions(state) == decisions(first[0])  # nothing recorded for the killed run
    assert [n for n in leftovers(state) if n.startswith(".work-")]
    proc2 = refit("--state", str(state), "--holdout", holdout_since(plant), "--quiet")
    assert proc2.returncode == EXIT_ACCEPTED, proc2.stderr
    assert (models / "shadow.pt").exists() and leftovers(state) == []


def test_a_second_refit_while_one_runs_is_busy(first: tuple[Path, subprocess.CompletedProcess[str]],
                                               tmp_path: Path) -> None:
    """While the lock is held (a refit runs), another exits busy at once and records nothing."""
    state = copy_state(first[0], tmp_path)
    with (state / "models" / ".refit.lock").open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        proc = refit("--state", str(state), "--quiet", timeout=60)
    assert proc.returncode == EXIT_BUSY and "another refit is running" in proc.stderr
    assert decisions(state) == decisions(first[0])


def test_sigterm_stops_a_refit_cleanly(first: tuple[Path, subprocess.CompletedProcess[str]],
                                       plant: tuple[pa.Table, list[dict[str, str]], float],
                                       tmp_path: Path) -> None:
    """SIGTERM (the agent stopping, systemd) ends a refit at once: failed, said so, nothing left."""
    table, events, until = plant
    state = copy_state(first[0], tmp_path)
    grow(state, table, events, until)
    log = tmp_path / "refit.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(BIN / "vigil-train"), "refit", "--state", str(state), "--holdout",
                                 holdout_since(plant), "--epochs", "200", "--patience", "200"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        wait_until(lambda: "epoch 1/200" in log.read_text(), 120, what="the refit training")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_FAILED
    d = json.loads(out.strip())
    assert d["result"] == "failed" and d["reason"].startswith("interrupted") and d == decisions(state)[-1]
    assert not (state / "models" / "shadow.pt").exists() and leftovers(state) == []


# -- the rules -------------------------------------------------------------------------------


def figures(**given: float) -> dict[str, float]:
    base = {"failures_caught": 3.0, "events_caught": 5.0, "false_alarms_per_asset_day": 0.1,
            "alarm_share": 0.02, "forecast_error": 2.0, "normal_asset_days": 10.0}
    return {**base, **given}


SHORT, LONG = 0.05, 0.5  # failure horizons in days: one alarm standing a horizon in 10 days is 0.005 or 0.05


@pytest.mark.parametrize(("candidate", "horizon_days", "failing"), [
    (figures(), SHORT, set()),                                                 # the same: not worse
    (figures(failures_caught=2.0), SHORT, {"failures_caught"}),
    (figures(events_caught=4.0), SHORT, {"events_caught"}),
    (figures(failures_caught=4.0, events_caught=9.0), SHORT, set()),          # better
    (figures(false_alarms_per_asset_day=0.2), SHORT, set()),                   # one alarm more in 10 days
    (figures(false_alarms_per_asset_day=0.21), SHORT, {"false_alarms_per_asset_day"}),
    (figures(alarm_share=0.04), SHORT, set()),                                 # 1.5 x 0.02 + 0.01
    (figures(alarm_share=0.041), SHORT, {"alarm_share"}),
    (figures(alarm_share=0.08), LONG, set()),                                  # 1.5 x 0.02 + 0.05
    (figures(alarm_share=0.081), LONG, {"alarm_share"}),
    (figures(forecast_error=2.2), SHORT, set()),                               # 1.1 x 2.0
    (figures(forecast_error=2.3), SHORT, {"forecast_error"}),
    (figures(forecast_error=math.nan), SHORT, set()),                          # no forecast head: no rule
])
def test_not_worse_rules(candidate: dict[str, float], horizon_days: float, failing: set[str]) -> None:
    """Each rule at its limit and just past it. Tolerance of the alarm rules: one alarm more over
    the held-out normal time (here 10 asset-days), standing up to a failure horizon."""
    checks = rules(candidate, figures(), budget_per_30_days=1.0, horizon_days=horizon_days)
    assert {r.name for r in checks if not r.passed} == failing
    assert all(r.why().startswith(r.text) for r in checks)


def test_refit_refuses_another_window_than_the_live_models(
        first: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """A candidate must read what the live model reads (the shadow contract): asking for another
    window fails before any training, and says why."""
    state = copy_state(first[0], tmp_path)
    proc = refit("--state", str(state), "--window", "24", "--quiet")
    assert proc.returncode == EXIT_FAILED and "window 24 differs from the live model's 12" in proc.stderr
    assert not list((state / "models").glob("candidate-*"))
