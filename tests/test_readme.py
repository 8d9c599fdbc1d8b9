"""The README's complete config example is a valid config (docs cannot drift from the code)."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import load_config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_complete_config_example_loads(tmp_path: Path) -> None:
    """The first TOML block under "Configuration" loads, with the defaults it claims."""
    text = README.read_text()
    section = text[text.index("## Configuration"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    path = tmp_path / "agent.toml"
    path.write_text(block.group(1))
    cfg = load_config(path, env={})
    assert cfg.http.listen == "127.0.0.1:9108"
    assert cfg.windows.max_assets == 10_000 and cfg.windows.max_payload_bytes == 65_536
    assert cfg.state.checkpoint_interval_s == 10 and cfg.outputs.prefix == "vigil"


def test_every_toml_example_loads(tmp_path: Path) -> None:
    """Every TOML example in the README is valid (fragments get a model path and a subscription)."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        text = block if "[model]" in block else '[model]\npath = "m.pt"\n\n' + block
        if "[[subscriptions]]" not in text:
            text += '\n[[subscriptions]]\nfilter = "p/+/+"\ntemplate = "p/{asset}/{channel}"\n'
        path = tmp_path / f"example{i}.toml"
        path.write_text(text)
        load_config(path, env={})
