"""The evaluation report: a Markdown page with PNG plots, written beside metrics.json.

Plots: predicted vs true RUL, risk timelines of a few assets with their failures marked,
a calibration curve of the failure probability, and the distribution of alert lead times.
A plot whose data the model or history lacks (no RUL head, no failures) is left out and
the page says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluate import Evaluation, failure_cells

N_TIMELINES = 4


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # an optional dependency: only the report needs it
        raise ValueError("the report needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def render(ev: Evaluation, out: Path, title: str = "Vigil model evaluation") -> Path:
    """Write report.md, metrics.json and the plots into `out`; return the report's path."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(ev.metrics, indent=2) + "\n")
    sections: list[str] = []
    for name, draw in (("rul", _rul_plot), ("risk_timelines", _timelines),
                       ("calibration", _calibration), ("lead_times", _lead_times)):
        fig = plt.figure(figsize=(7.5, 4.5))
        try:
            caption = draw(fig, ev)
            if caption.startswith("(skipped"):
                sections.append(caption)
            else:
                fig.tight_layout()
                fig.savefig(out / f"{name}.png", dpi=110)
                sections.append(f"![{name}]({name}.png)\n\n{caption}")
        finally:
            plt.close(fig)
    page = out / "report.md"
    page.write_text(_markdown(ev, title, sections))
    return page


def _markdown(ev: Evaluation, title: str, sections: list[str]) -> str:
    s = ev.spec
    lines = [f"# {title}", "",
             f"Model `{s.version}` — channels {len(s.channels)}, "
             f"window {s.window} cells of {s.period_s:g} s, "
             f"heads {', '.join(s.heads)}, regimes {max(s.normalisation.n_regimes, 1)}"
             + (f", RUL cap {s.rul_cap:g} cells" if s.rul_cap else "") + ".",
             f"Data: {len(ev.history.assets)} assets, {int(ev.metrics['windows'])} windows, "
             f"{int(ev.metrics['failures'])} failures. Thresholds: warning {s.thresholds.warning:.4f}, "
             f"critical {s.thresholds.critical:.4f}.", "",
             "## Metrics", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:g} |" for k, v in ev.metrics.items() if isinstance(v, float | int)]
    per = ev.metrics.get("forecast_rmse_per_channel")
    if per:
        lines += ["", "## Forecast error per channel", "",
                  "RMSE of the forecast mean over the horizon, in units of the training std.", "",
                  "| channel | RMSE |", "|---|---:|"]
        lines += [f"| {c} | {v:.4f} |" for c, v in per.items()]
    lines += ["", "## Plots", ""]
    for sec in sections:
        lines += [sec, ""]
    return "\n".join(lines)


def _rul_plot(fig: Any, ev: Evaluation) -> str:
    sc, ws = ev.scored, ev.ws
    if sc.rul is None or not np.isfinite(ws.rul).any():
        return "(skipped predicted vs true RUL: the model has no RUL head or the data no failures)"
    ax = fig.add_subplot(1, 1, 1)
    known = np.flatnonzero(np.isfinite(ws.rul))
    some = known[np.random.default_rng(0).permutation(len(known))[:5000]]
    ax.scatter(ws.rul[some], sc.rul[some], s=3, alpha=0.15, color="tab:gray", label="all windows")
    last = ws.last_per_asset()
    last = last[np.isfinite(ws.rul[last])]
    ax.scatter(ws.rul[last], sc.rul[last], s=14, color="tab:blue", label="last window per asset")
    top = max(float(np.nanmax(ws.rul[known])), ev.spec.rul_cap) * 1.05
    ax.plot([0, top], [0, top], color="black", lw=0.8, label="perfect")
    ax.plot([0, ev.spec.rul_cap, top], [0, ev.spec.rul_cap, ev.spec.rul_cap], color="tab:red", lw=0.8,
            ls="--", label=f"capped target ({ev.spec.rul_cap:g})")
    ax.set_xlabel("true RUL (cells)")
    ax.set_ylabel("predicted RUL (cells)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", fontsize=8)
    m = ev.metrics
    return (f"Predicted vs true RUL. Last window per asset: RMSE {m.get('rul_rmse', float('nan')):g}, "
            f"NASA score {m.get('rul_score', float('nan')):g} over {int(m.get('rul_assets', 0))} assets.")


def _timeline_assets(ev: Evaluation) -> list[int]:
    fc = failure_cells(ev.ws, ev.events, ev.spec.period_s)
    failing = sorted(fc, key=lambda a: -len(fc[a]))
    healthy = [a for a in np.unique(ev.ws.asset).tolist() if a not in fc]
    picked = failing[: N_TIMELINES - 1] + healthy[:1]
    return (picked + [a for a in failing[N_TIMELINES - 1:]])[:N_TIMELINES]


def rarity(risk: Any) -> Any:
    """-log10(1 - risk): for a risk that is a healthy tail probability, 4 means "one healthy
    window in 10,000 scores this high"; capped at 12."""
    return np.minimum(-np.log10(np.clip(1.0 - np.asarray(risk, dtype=np.float64), 1e-12, 1.0)), 12.0)


def _timelines(fig: Any, ev: Evaluation) -> str:
    ws, sc, t = ev.ws, ev.scored, ev.spec.thresholds
    assets = _timeline_assets(ev)
    fc = failure_cells(ws, ev.events, ev.spec.period_s)
    # Thresholds far in the tail (a model without failure labels) read better as rarity.
    tail = t.warning > 0.99
    show = rarity if tail else (lambda r: r)
    for k, a in enumerate(assets):
        ax = fig.add_subplot(len(assets), 1, k + 1)
        idx = np.flatnonzero(ws.asset == a)
        idx = idx[np.argsort(ws.end_cell[idx])]
        ax.plot(ws.end_cell[idx], show(sc.risk[idx]), lw=0.8, color="tab:blue")
        ax.axhline(show(t.warning), color="tab:orange", lw=0.7, ls="--")
        ax.axhline(show(t.critical), color="tab:red", lw=0.7, ls="--")
        for f in fc.get(a, []):
            ax.axvline(f, color="black", lw=1.2)
        ax.set_ylim(0, 12.2 if tail else 1.02)
        ax.set_ylabel(ws.assets[a], fontsize=7)
        ax.tick_params(labelsize=7)
    fig.axes[-1].set_xlabel("grid cell (event time)")
    scale = (" on a rarity scale, -log10(1 - risk): 4 means one healthy window in 10,000 scores as high"
             if tail else "")
    return (f"Risk over time for a few assets{scale}; dashed lines are the warning and critical "
            "thresholds, solid black lines failures.")


def _calibration(fig: Any, ev: Evaluation) -> str:
    sc, ws = ev.scored, ev.ws
    if sc.p_fail is None or ws.fail.sum() == 0:
        return "(skipped calibration curve: the model has no failure head or the data no failures)"
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0, 1, 11)
    b = np.clip(np.digitize(sc.p_fail, edges) - 1, 0, 9)
    xs, ys, ns = [], [], []
    for j in range(10):
        m = b == j
        if m.any():
            xs.append(float(sc.p_fail[m].mean()))
            ys.append(float(ws.fail[m].mean()))
            ns.append(int(m.sum()))
    ax.plot([0, 1], [0, 1], color="black", lw=0.8)
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for x, y, n in zip(xs, ys, ns, strict=True):
        ax.annotate(str(n), (x, y), fontsize=6, textcoords="offset points", xytext=(3, -8))
    ax.set_xlabel("predicted P(failure within horizon)")
    ax.set_ylabel("observed frequency")
    return "Calibration of the failure probability (10 bins; numbers are windows per bin)."


def _lead_times(fig: Any, ev: Evaluation) -> str:
    leads = np.asarray(ev.scored.alerts.lead_times_s) / ev.spec.period_s
    a = ev.scored.alerts
    if a.failures == 0:
        return "(skipped lead-time distribution: no failures in the data)"
    ax = fig.add_subplot(1, 1, 1)
    if len(leads):
        ax.hist(leads, bins=min(20, max(len(leads), 1)), color="tab:green")
    ax.axvline(ev.spec.fail_horizon, color="black", lw=0.8, ls="--")
    ax.set_xlabel(f"lead time of the first alert before failure (cells of {ev.spec.period_s:g} s)")
    ax.set_ylabel("failures")
    return (f"Lead time before failure: {a.caught} of {a.failures} failures had a warning within the "
            f"failure horizon ({ev.spec.fail_horizon} cells, dashed).")
