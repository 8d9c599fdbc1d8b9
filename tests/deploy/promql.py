"""The metric names a PromQL expression reads, and the series names a scrape exports."""

from __future__ import annotations

import re

# Grafana's built-in variables stand for durations; user variables sit inside label strings.
_GRAFANA_DURATIONS = re.compile(r"\$\{?__(rate_interval|interval|range)\b\}?")
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A whole identifier (no backtracking into a shorter one) that is not a function call.
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_NUMBER = re.compile(r"(?<![\w.:])\d+(\.\d+)?([eE][+-]?\d+)?([smhdwy]|ms)*(?![\w:])")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
             "offset", "bool", "inf", "nan", "atan2", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """Every metric name selected in `expr` (functions, keywords, labels and durations left out)."""
    text = _GRAFANA_DURATIONS.sub("1m", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)  # numbers and durations
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def scrape_names(text: str) -> set[str]:
    """The sample names in a Prometheus text exposition (histograms as _bucket/_sum/_count)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
