"""A refit's report: the candidate against the live model on the held-out part (Markdown + PNG)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.alerts import rfc3339_ms
from training.judge import Holdout, Judged, Rule
from training.report import _pyplot, rarity

MAX_ASSETS = 6
SHOWN = ("failures", "failures_caught", "maintenance", "maintenance_caught", "alarms", "false_alarms",
         "normal_asset_days", "false_alarms_per_asset_day", "alarm_share", "forecast_error",
         "mean_lead_time_s", "windows", "unscored_share")


def render(out: Path, candidate: Judged, live: Judged, checks: list[Rule], holdout: Holdout,
           result: str, reason: str, fit_summary: dict[str, Any], names: tuple[str, str]) -> Path:
    """Write report.md and risk.png into `out`; return the page's path. `names`: the candidate's
    and the live model's files, as the reader knows them."""
    out.mkdir(parents=True, exist_ok=True)
    caption = _risk_plot(out / "risk.png", candidate, live)
    lines = [
        "# Refit: candidate against the live model", "",
        f"**{result}**: {reason}", "",
        f"Held out: {rfc3339_ms(holdout.start)} to {rfc3339_ms(holdout.end)} (the candidate never saw "
        "these readings or their events). Both models ran through the agent's runtime, risk and level "
        "machine on the windows ending there.", "",
        f"- candidate `{candidate.spec.version}` ({names[0]}): trained on "
        f"{fit_summary.get('train_windows', '?')} windows, validated on "
        f"{fit_summary.get('val_windows', '?')}, "
        f"best epoch {fit_summary.get('best_epoch', '?')} of {fit_summary.get('epochs_run', '?')}",
        f"- live `{live.spec.version}` ({names[1]})", "",
        "## Not worse: every rule must hold", "",
        "| rule | candidate | live | limit | |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r.text} | {_num(r.candidate)} | {_num(r.live)} | {('>= ' if r.at_least else '<= ')}"
              f"{_num(r.limit)} | {'pass' if r.passed else 'FAIL'} |" for r in checks]
    lines += ["", "## Held-out figures", "", "| | candidate | live |", "|---|---:|---:|"]
    lines += [f"| {k} | {_num(candidate.metrics.get(k, math.nan))} | {_num(live.metrics.get(k, math.nan))} |"
              for k in SHOWN]
    lines += ["", "Normal time: windows with no failure or maintenance within the failure horizon after "
              "them. An alarm is a raise from ok; it is false when no failure or maintenance follows "
              "within the horizon. Forecast error: squared error relative to repeating the last reading.",
              "", "## Risk over the held-out time", "", "![risk](risk.png)", "", caption, ""]
    page = out / "report.md"
    page.write_text("\n".join(lines))
    return page


def _num(v: float) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:g}"


def _assets(candidate: Judged, live: Judged) -> list[str]:
    """Assets with held-out events first, then the others, a few at most."""
    names = sorted(set(candidate.traces) & set(live.traces))
    eventful = {e.asset for e in live.events}
    return sorted(names, key=lambda a: (a not in eventful, a))[:MAX_ASSETS]


def _broken(ts: Any, values: Any, period_s: float) -> tuple[Any, Any]:
    """The series with a gap (no point) where readings stopped, so no line bridges a downtime."""
    cut = np.flatnonzero(np.diff(ts) > 1.5 * period_s) + 1
    return (np.insert(np.asarray(ts, dtype=np.float64), cut, ts[cut - 1] + period_s),
            np.insert(np.asarray(values, dtype=np.float64), cut, np.nan))


def _risk_plot(path: Path, candidate: Judged, live: Judged) -> str:
    plt = _pyplot()
    assets = _assets(candidate, live)
    tail = max(candidate.thresholds.warning, live.thresholds.warning) > 0.99
    show = rarity if tail else (lambda r: r)
    fig = plt.figure(figsize=(8.5, 1.7 * max(len(assets), 1) + 0.8))
    try:
        for k, asset in enumerate(assets):
            ax = fig.add_subplot(len(assets), 1, k + 1, sharex=fig.axes[0] if k else None)
            for judged, colour, name in ((live, "tab:gray", "live"), (candidate, "tab:blue", "candidate")):
                tr = judged.traces[asset]
                ts, risk = _broken(tr.ts, show(tr.risk), judged.spec.period_s)
                ax.plot([datetime.fromtimestamp(t, UTC) for t in ts], risk, lw=0.8, color=colour, label=name)
                ax.axhline(float(show(judged.thresholds.warning)), color=colour, lw=0.7, ls="--")
            for e in live.events:
                if e.asset == asset:
                    ax.axvline(datetime.fromtimestamp(e.ts, UTC), color="black",
                               lw=1.2 if e.event == "failure" else 0.8,
                               ls="-" if e.event == "failure" else ":")
            ax.set_ylim(0, 12.2 if tail else 1.02)
            ax.set_ylabel(asset, fontsize=7)
            ax.tick_params(labelsize=7)
            if k == 0:
                ax.legend(loc="upper left", fontsize=7)
        if assets:
            fig.axes[-1].set_xlabel("event time (UTC)")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    scale = " on a rarity scale, -log10(1 - risk)" if tail else ""
    return (f"Risk per window{scale} of the live (grey) and candidate (blue) models, each with its warning "
            "threshold dashed; solid black lines are failures, dotted ones maintenance. "
            f"{len(assets)} of {len(set(live.traces))} assets shown, those with events first.")
