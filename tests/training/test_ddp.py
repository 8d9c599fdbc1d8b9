"""DDP training: the draws shared out by asset, and a real 2-process run (torchrun, gloo, loopback).

The 2-process run (tests/training/ddp_worker.py) must train the same weights as one process
with the same global batch and seed, resume from rank 0's checkpoint as the same run, draw no
window twice per epoch across processes, and leave every file to rank 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.runtime import load_model
from tests.broker import free_port
from tests.training.ddp_worker import CFG, LONELY, RUL_CAP, ddp_data, new_model, new_trend, one_asset, weights
from training import distributed as dist
from training.labels import Inputs
from training.shards import Plan, as_source, census
from training.train import train

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5


def ids_of(rows: list[np.ndarray]) -> list[tuple[int, int]]:
    return [tuple(map(int, r)) for r in np.concatenate(rows)] if rows else []


class TestDraws:
    """The shares of an epoch for 1, 2 and 4 processes, computed in one process (no process group)."""

    def draws(self, world: int, plan: Plan, epoch: int) -> list[list[list[tuple[int, int]]]]:
        """[rank][step] -> the (asset, end cell) of the windows that rank draws."""
        tr, _ = ddp_data()
        src = as_source(tr)
        counts = census(src, dist.SINGLE, plan.hold)
        out = []
        for rank in range(world):
            ep = plan.epoch(src, counts, epoch, dist.Dist(rank, world), RUL_CAP)
            out.append([ids_of([ep.batch(k).ids]) for k in range(ep.steps)])
        return out

    def test_no_window_twice_and_the_same_global_batches_for_any_world(self) -> None:
        """Every window of an epoch is drawn once, by one process; batch k is the same set for W = 1, 2, 4."""
        plan = Plan(shards=4, hold=150, batch_size=64, windows_per_epoch=10_000, seed=3)
        tr, _ = ddp_data()
        for epoch in range(2):
            one = self.draws(1, plan, epoch)[0]
            everything = [w for step in one for w in step]
            assert len(everything) == len(set(everything)) == len(tr.ws)  # the whole epoch, once each
            for world in (2, 4):
                shares = self.draws(world, plan, epoch)
                for k, batch in enumerate(one):
                    parts = [set(rank[k]) for rank in shares]
                    assert sum(len(p) for p in parts) == len(batch)        # disjoint across ranks
                    assert set().union(*parts) == set(batch)              # the same global batch
                    assert all(parts)                                      # each rank draws its share
                assets = [{a for step in rank for a, _ in step} for rank in shares]
                assert not set.intersection(*assets)                      # sharded by asset
        assert self.draws(1, plan, 0) != self.draws(1, plan, 1)           # reshuffled every epoch

    def test_loads_are_bounded(self) -> None:
        """The census and the shards load whole assets about `hold` windows at a time; a shard
        holds at most two loads."""
        tr, _ = ddp_data()
        src = as_source(tr)
        sizes: list[int] = []

        class Recording:
            assets = src.assets

            def windows_of(self, assets: Sequence[int]) -> Inputs:
                got = src.windows_of(assets)
                sizes.append(len(got.ws))
                return got

        biggest = max(np.bincount(tr.ws.asset))
        counts = census(Recording(), dist.SINGLE, 150)
        assert counts.total == len(tr.ws) and len(sizes) > 3 and max(sizes) <= 150 + biggest
        sizes.clear()
        ep = Plan(shards=2, hold=150, batch_size=64, windows_per_epoch=10_000, seed=0).epoch(
            Recording(), counts, 0, dist.SINGLE, RUL_CAP)
        for k in range(ep.steps):
            ep.batch(k)
            assert all(len(s.loaded) <= 2 for s in ep.shards)
        assert len(sizes) > 2 and max(sizes) <= 150 + biggest and sum(sizes) == len(tr.ws)

    def test_windows_per_epoch_caps_the_draws(self) -> None:
        """With fewer windows per epoch than windows, an epoch draws about that many, none twice."""
        plan = Plan(shards=4, hold=150, batch_size=32, windows_per_epoch=200, seed=0)
        one = self.draws(1, plan, 0)[0]
        drawn = [w for step in one for w in step]
        assert len(one) == 200 // 32 + 1 and 196 <= len(drawn) <= 200 and len(set(drawn)) == len(drawn)

    def test_shards_must_be_a_multiple_of_the_processes(self) -> None:
        with pytest.raises(ValueError, match="--shards 8 is not a multiple of the 3 processes"):
            Plan(shards=8, hold=150, batch_size=32, windows_per_epoch=100, seed=0).check(3)

    def test_environment_without_torchrun_is_one_process(self) -> None:
        """No WORLD_SIZE (or 1): no process group; a bad variable is a clear error."""
        assert dist.from_env({})[0] == dist.SINGLE
        assert dist.from_env({"WORLD_SIZE": "1", "RANK": "0"})[0] == dist.SINGLE
        ctx, backend = dist.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, backend="gloo")
        assert (ctx.rank, ctx.world, ctx.is_writer, backend) == (1, 2, False, "gloo")
        with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
            dist.from_env({"WORLD_SIZE": "two"})
        with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
            dist.from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_processes_exit_cleanly_after_ddp() -> None:
    """Both processes of a short DDP run, leaving as `vigil-train fit` does, exit 0.

    Through Python's shutdown about one launch in four aborted (SIGABRT, "terminate called
    without an active exception", a gloo thread torn down; the worker's --shutdown shows it),
    so four launches would catch a return to that about two times in three.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"}
    for launch in range(4):
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "training" / "ddp_exit_worker.py")],
                                  env={**env, "MASTER_PORT": port, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stderr=subprocess.PIPE, text=True) for r in range(2)]
        try:
            for r, proc in enumerate(procs):
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, f"launch {launch}, rank {r}: {proc.returncode}\n{err[-2000:]}"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def test_a_failed_fit_under_ddp_exits_1_with_its_error(small_history: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """`vigil-train fit` that fails inside the process group: both processes print the error
    and exit with its code 1 through `distributed.leave` (which must carry the code), and no
    model file is left."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    cmd = [sys.executable, "-m", "training", "fit", "--history", str(small_history[0]), "--events",
           str(small_history[1]), "--window", "12", "--horizon", "2", "--hidden", "8", "--epochs", "1",
           "--threads", "1", "--shards", "3", "--quiet", "--out", str(tmp_path / "m.pt")]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        for r, proc in enumerate(procs):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 1, f"rank {r}: {proc.returncode}\n{err[-2000:]}"
            assert "vigil-train: error: --shards 3 is not a multiple of the 2 processes" in err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not (tmp_path / "m.pt").exists()


@pytest.fixture(scope="module")
def two_processes(small_history: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Path, list[dict[str, Any]], str]:
    """The worker under torchrun, 2 processes on loopback; its output folder, results and stdout."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         str(REPO / "tests" / "training" / "ddp_worker.py"), str(out), str(small_history[0]),
         str(small_history[1])],
        capture_output=True, text=True, timeout=240, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [torch.load(out / "results" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return out, results, proc.stdout


def close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest difference between two sets of weights."""
    assert a.keys() == b.keys()
    return max((float(np.abs(a[k] - b[k]).max()) for k in a if a[k].size), default=0.0)


class TestTwoProcesses:
    def test_same_weights_as_one_process(self, two_processes: tuple[Path, list[dict[str, Any]], str]) -> None:
        """2 processes (global batch 64, seed 3) end with the weights of 1 process, within 1e-5."""
        _, results, _ = two_processes
        tr, va = ddp_data()
        one = new_model()
        run = train(one, tr, va, CFG, RUL_CAP)
        assert close(results[0]["full"], results[1]["full"]) == 0.0  # DDP keeps the replicas equal
        assert close(weights(one), results[0]["full"]) < TOL
        assert [r["epoch"] for r in results[0]["curve"]] == [1, 2, 3]
        for mine, theirs in zip(run.curve, results[0]["curve"], strict=True):
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-5)
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)

    def test_trend_scale_and_weights_as_one_process(
            self, two_processes: tuple[Path, list[dict[str, Any]], str]) -> None:
        """The trend encoder's feature scale, fitted from each process's share of the training
        windows and summed over both, is one process's; so are the weights trained after it."""
        _, results, _ = two_processes
        tr, va = ddp_data()
        one = new_trend(tr.ws.window)
        train(one, tr, va, CFG, RUL_CAP)
        mine, theirs = weights(one), results[0]["trend"]
        assert close(theirs, results[1]["trend"]) == 0.0
        assert float(np.abs(mine["trend.feature_std"] - 1.0).max()) > 0.1  # fitted, not the identity
        for key in ("trend.feature_mean", "trend.feature_std"):
            np.testing.assert_allclose(theirs[key], mine[key], rtol=1e-6, atol=1e-7)
        assert close(mine, theirs) < TOL

    def test_a_process_without_windows_still_steps(self, two_processes: tuple[Path, list[dict[str, Any]], str]
                                                   ) -> None:
        """One training asset: rank 1 draws nothing in every step, and the run is still the 1-process run."""
        _, results, _ = two_processes
        tr, va = ddp_data()
        one = new_model()
        train(one, one_asset(tr), va, LONELY, RUL_CAP)
        assert close(weights(one), results[0]["lonely"]) < TOL
        assert close(weights(one), weights(new_model())) > TOL  # it did train

    def test_no_window_drawn_twice_per_epoch(self, two_processes: tuple[Path, list[dict[str, Any]], str]
                                             ) -> None:
        """The windows the two processes drew: disjoint, every training window once per epoch,
        and each step's union is the global batch one process draws."""
        _, results, _ = two_processes
        tr, va = ddp_data()
        single: dict[tuple[int, int], list[tuple[int, int]]] = {}
        train(new_model(), tr, va, CFG, RUL_CAP,
              on_batch=lambda e, k, ids: single.__setitem__((e, k), ids_of([ids])))
        per_rank = [{(e, k): ids_of([ids]) for e, k, ids in r["drawn"]} for r in results]
        assert per_rank[0].keys() == per_rank[1].keys() == single.keys()
        for epoch in range(CFG.epochs):
            drawn = [w for r in per_rank for (e, _), ids in r.items() if e == epoch for w in ids]
            assert len(drawn) == len(set(drawn)) == len(tr.ws)
        for key, batch in single.items():
            a, b = set(per_rank[0][key]), set(per_rank[1][key])
            assert not a & b and a | b == set(batch) and a and b

    def test_resume_continues_the_same_run(self, two_processes: tuple[Path, list[dict[str, Any]], str],
                                           tmp_path: Path) -> None:
        """Stopped after 1 epoch and resumed on 2 processes: the uninterrupted run's weights and curve.
        Its 1-epoch checkpoint also resumes on one process as the same run."""
        out, results, _ = two_processes
        assert results[0]["part_finished"] is False
        for r in results:
            assert close(r["resumed"], r["full"]) < TOL
            assert [c["val_loss"] for c in r["rest_curve"]] == pytest.approx(
                [c["val_loss"] for c in r["curve"]], rel=1e-6)
        path = tmp_path / "after1.ckpt"
        shutil.copy(out / "shared" / "after1.ckpt", path)
        tr, va = ddp_data()
        alone = new_model()
        rest = train(alone, tr, va, CFG, RUL_CAP, checkpoint=path, resume=True)
        assert rest.epochs_run == 3 and close(weights(alone), results[0]["full"]) < TOL

    def test_rank_zero_alone_writes(self, two_processes: tuple[Path, list[dict[str, Any]], str]) -> None:
        """`vigil-train fit --stream` under torchrun, each rank given its own paths: rank 0 wrote the
        model, summary, checkpoint and report; rank 1 wrote nothing; one JSON line on stdout."""
        out, _, stdout = two_processes
        zero = out / "rank0"
        assert {p.name for p in zero.iterdir()} == {"m.pt", "m.summary.json", "c.ckpt", "report"}
        assert (zero / "report" / "report.md").exists()
        assert not (out / "rank1").exists()
        assert [ln for ln in stdout.splitlines() if ln.startswith("{")] and '"model"' in stdout
        assert load_model(zero / "m.pt").spec.window == 12
        summary = json.loads((zero / "m.summary.json").read_text())
        assert summary["stream"]["assets"] == 6 and summary["epochs_run"] == 2

    def test_shards_not_divisible_is_refused(self, tmp_path: Path) -> None:
        """A number of shards the processes do not divide is refused before any training."""
        tr, va = ddp_data()
        with pytest.raises(ValueError, match="not a multiple of the 2 processes"):
            train(new_model(), tr, va, replace(CFG, shards=3), RUL_CAP, ctx=dist.Dist(0, 2))
