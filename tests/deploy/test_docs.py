"""docs/operate.md names only files that ship, and covers every part of deploy/."""

from __future__ import annotations

import re

from tests.deploy.tools import DEPLOY

GUIDE = DEPLOY.parent / "docs" / "operate.md"


def test_every_deploy_path_in_the_guide_exists() -> None:
    """Each deploy/... path the install guide mentions is a file or folder in the repository."""
    paths = set(re.findall(r"deploy/[\w./-]*[\w/]", GUIDE.read_text()))
    assert paths
    assert sorted(p for p in paths if not (DEPLOY.parent / p).exists()) == []


def test_guide_covers_every_deploy_folder() -> None:
    """Every folder under deploy/ is explained in the install guide."""
    text = GUIDE.read_text()
    assert [d.name for d in DEPLOY.iterdir() if d.is_dir() and f"deploy/{d.name}/" not in text] == []


def test_guide_lists_every_alert() -> None:
    """The guide's alert table has a row for every alert rule."""
    text = GUIDE.read_text()
    rules = re.findall(r"- alert: (\w+)", (DEPLOY / "prometheus" / "vigil-rules.yml").read_text())
    assert [r for r in rules if f"| {r} |" not in text] == []
