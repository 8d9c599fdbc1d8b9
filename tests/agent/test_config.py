"""Agent configuration: TOML loading, defaults, environment overrides, and errors naming the key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError

SMALLEST = """\
[broker]
url = "mqtt://127.0.0.1:1883"      # VIGIL_BROKER_URL overrides
client_id = "gw-01"

[model]
path = "models/pump.pt"

[[subscriptions]]
filter = "plant/+/+"
template = "plant/{asset}/{channel}"
codec = "json"

[outputs]
prefix = "vigil"

[http]
listen = "127.0.0.1:9108"
"""

MINIMAL = """\
[model]
path = "m.pt"

[[subscriptions]]
filter = "plant/+/+"
template = "plant/{asset}/{channel}"
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_config(path, env={} if env is None else env)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return str(exc.value)


class TestLoadConfig:
    def test_smallest_config_from_design(self, tmp_path: Path) -> None:
        """The smallest config in DESIGN.md loads with what it says."""
        cfg = load(tmp_path, SMALLEST)
        assert cfg.broker.parsed_url.host == "127.0.0.1" and cfg.broker.parsed_url.port == 1883
        assert cfg.broker.client_id == "gw-01"
        assert cfg.resolved_agent_id == "gw-01"
        assert cfg.subscriptions[0].codec == "json"
        assert cfg.outputs.prefix == "vigil"

    def test_defaults(self, tmp_path: Path) -> None:
        """Unset keys take the documented defaults."""
        cfg = load(tmp_path, MINIMAL)
        assert cfg.http.host_port == ("127.0.0.1", 9108)
        assert cfg.outputs.prefix == "vigil"
        w = cfg.windows
        assert (w.max_assets, w.max_payload_bytes, w.allowed_lateness, w.max_gap) == (10_000, 65_536,
                                                                                     10, 5)
        assert w.max_future_skew_s == 300.0
        assert w.ts_floor == datetime(2000, 1, 1, tzinfo=UTC)
        assert (cfg.broker.reconnect_min_s, cfg.broker.reconnect_max_s) == (0.2, 5.0)
        assert cfg.state.checkpoint_interval_s == 10.0

    def test_relative_model_path_is_taken_from_the_config_folder(self, tmp_path: Path) -> None:
        """A relative model path resolves against the config file's folder, not the cwd."""
        cfg = load(tmp_path, SMALLEST)
        assert cfg.model.path == tmp_path / "models" / "pump.pt"

    def test_absolute_model_path_is_kept(self, tmp_path: Path) -> None:
        """An absolute model path stays as written."""
        cfg = load(tmp_path, MINIMAL.replace('"m.pt"', '"/opt/models/m.pt"'))
        assert cfg.model.path == Path("/opt/models/m.pt")

    def test_relative_state_dir_is_taken_from_the_config_folder(self, tmp_path: Path) -> None:
        """A relative state dir resolves against the config file's folder."""
        cfg = load(tmp_path, MINIMAL + '\n[state]\ndir = "st"\n')
        assert cfg.state.dir == tmp_path / "st"

    def test_relative_tls_file_is_taken_from_the_config_folder(self, tmp_path: Path) -> None:
        """A relative TLS CA file resolves against the config file's folder, as load_config promises."""
        cfg = load(tmp_path, '[broker.tls]\nca_file = "certs/ca.pem"\n' + MINIMAL)
        assert cfg.broker.tls.ca_file == tmp_path / "certs" / "ca.pem"

    def test_hash_filter_with_template_naming_the_depth(self, tmp_path: Path) -> None:
        """A trailing '#' filter is accepted when the template names the levels it takes."""
        cfg = load(tmp_path, SMALLEST.replace('filter = "plant/+/+"', 'filter = "plant/#"'))
        assert cfg.subscriptions[0].filter == "plant/#"

    def test_environment_overrides_broker(self, tmp_path: Path) -> None:
        """VIGIL_BROKER_URL, _USERNAME and _PASSWORD override the file."""
        cfg = load(tmp_path, SMALLEST, env={"VIGIL_BROKER_URL": "mqtts://broker.example:8883",
                                            "VIGIL_BROKER_USERNAME": "u",
                                            "VIGIL_BROKER_PASSWORD": "p"})
        assert cfg.broker.url == "mqtts://broker.example:8883"
        assert cfg.broker.parsed_url.tls
        assert (cfg.broker.username, cfg.broker.resolved_password()) == ("u", "p")

    def test_empty_environment_value_does_not_override(self, tmp_path: Path) -> None:
        """An empty VIGIL_BROKER_URL leaves the file's url in place."""
        cfg = load(tmp_path, SMALLEST, env={"VIGIL_BROKER_URL": ""})
        assert cfg.broker.url == "mqtt://127.0.0.1:1883"

    def test_bad_environment_url_names_the_key(self, tmp_path: Path) -> None:
        """A bad URL from the environment is reported as broker.url."""
        with pytest.raises(ConfigError, match=r"broker\.url"):
            load(tmp_path, SMALLEST, env={"VIGIL_BROKER_URL": "http://x:1"})

    def test_password_file(self, tmp_path: Path) -> None:
        """A password file is read (and stripped) when asked for the password."""
        (tmp_path / "pw").write_text("s3cret\n")
        cfg = load(tmp_path, f'[broker]\npassword_file = "{tmp_path / "pw"}"\n' + MINIMAL)
        assert cfg.broker.resolved_password() == "s3cret"


class TestConfigErrors:
    @pytest.mark.parametrize(("text", "key", "words"), [
        (SMALLEST.replace("mqtt://127.0.0.1:1883", "http://127.0.0.1:1883"), "broker.url", "scheme"),
        (SMALLEST.replace('client_id = "gw-01"', 'client_id = "gw-01"\nclientid = "x"'),
         "broker.clientid", "unknown key"),
        (SMALLEST + "\n[windows]\nmax_gapp = 3\n", "windows.max_gapp", "unknown key"),
        (SMALLEST.replace("plant/{asset}/{channel}", "plant/{asset}"), "subscriptions.0", "levels"),
        (SMALLEST.replace("plant/{asset}/{channel}", "factory/{asset}/{channel}"),
         "subscriptions.0", "does not match"),
        (SMALLEST.replace("plant/{asset}/{channel}", "plant/{line}/{channel}"), "subscriptions.0",
         "{asset}"),
        (SMALLEST.replace('filter = "plant/+/+"', 'filter = "plant/#/+"'), "subscriptions.0",
         "'#' may only stand alone"),
        (SMALLEST.replace('filter = "plant/+/+"', 'filter = "plant/+/a#"'), "subscriptions.0", "'#'"),
        (SMALLEST.replace('filter = "plant/+/+"', 'filter = "plant/x/#"').replace(
            "plant/{asset}/{channel}", "plant"), "subscriptions.0", "shorter"),
        (SMALLEST.replace('path = "models/pump.pt"', ""), "model.path", "missing"),
        (MINIMAL.replace('[model]\npath = "m.pt"\n', ""), "model", "missing"),
        (SMALLEST.replace('listen = "127.0.0.1:9108"', 'listen = "9108"'), "http.listen", "HOST:PORT"),
        (SMALLEST + "\n[windows]\nmax_gap = -1\n", "windows.max_gap", ""),
        (SMALLEST.replace('client_id = "gw-01"', 'client_id = "gw/01"'), "broker.client_id", ""),
    ])
    def test_error_names_the_key(self, tmp_path: Path, text: str, key: str, words: str) -> None:
        """Each invalid config raises ConfigError with a message naming the key and the reason."""
        msg = error_of(tmp_path, text)
        assert f": {key}:" in msg
        assert words in msg
        assert "\n" not in msg

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A file that is not TOML raises ConfigError saying so."""
        assert "not valid TOML" in error_of(tmp_path, "[broker\nurl = 1")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing config file raises ConfigError naming the path."""
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(tmp_path / "nope.toml", env={})

    def test_broker_not_a_table(self, tmp_path: Path) -> None:
        """`broker` as a plain value is rejected with a clear reason."""
        assert "broker: must be a table" in error_of(tmp_path, 'broker = "mqtt://x"\n' + MINIMAL)

    def test_no_subscriptions(self, tmp_path: Path) -> None:
        """A config without any subscription is rejected, naming `subscriptions`."""
        assert ": subscriptions:" in error_of(tmp_path, '[model]\npath = "m.pt"\n')


class TestScaleOutConfig:
    def test_partition_parsed_and_checked(self) -> None:
        """`partition = "i/n"` needs 0 <= i < n; anything else names the key."""
        from agent.config import AssetsConfig

        assert AssetsConfig(partition="1/3").member == (1, 3)
        assert AssetsConfig().member is None
        for bad in ("3/3", "a/2", "1", "-1/2"):
            with pytest.raises(ValueError, match="i/n"):
                AssetsConfig(partition=bad)

    def test_shared_subscription_filter_matches_without_prefix(self) -> None:
        """A `$share/{group}/` filter is checked against the template without its prefix."""
        from agent.config import SubscriptionConfig

        s = SubscriptionConfig(filter="$share/vigil/plant/+/+", template="plant/{asset}/{channel}")
        assert s.topic_filter == "plant/+/+"
        with pytest.raises(ValueError, match="share"):
            SubscriptionConfig(filter="$share//plant/+/+", template="plant/{asset}/{channel}")


class TestRecordConfig:
    def test_off_by_default_and_beside_the_state(self, tmp_path: Path) -> None:
        """Recording is off unless asked for; its folder defaults to `recording` in the state dir."""
        cfg = load(tmp_path, MINIMAL + '\n[state]\ndir = "st"\n')
        assert cfg.record.enabled is False
        assert cfg.record_dir == tmp_path / "st" / "recording"

    def test_relative_dir_is_taken_from_the_config_file(self, tmp_path: Path) -> None:
        """A relative `[record] dir` is under the config file's folder, like the state dir."""
        cfg = load(tmp_path, MINIMAL + '\n[record]\nenabled = true\ndir = "rec"\nmax_bytes = 1000000\n'
                   'file_rows = 1000\nrotate_s = 30\n')
        assert cfg.record.enabled and cfg.record_dir == tmp_path / "rec"
        assert (cfg.record.max_bytes, cfg.record.file_rows, cfg.record.rotate_s) == (1_000_000, 1000, 30.0)

    @pytest.mark.parametrize("line", ["max_bytes = 0", "file_rows = 0", "rotate_s = 0", "bogus = 1"])
    def test_bad_values_name_the_key(self, tmp_path: Path, line: str) -> None:
        """A bad `[record]` value is refused with the key in the message."""
        msg = error_of(tmp_path, MINIMAL + f"\n[record]\n{line}\n")
        assert f"record.{line.split()[0]}" in msg


class TestMetricsConfig:
    def test_bounded_by_default(self, tmp_path: Path) -> None:
        """Without a `[metrics]` table, per-asset series are the top 500 assets."""
        cfg = load(tmp_path, MINIMAL)
        assert (cfg.metrics.per_asset, cfg.metrics.per_asset_limit) == ("top", 500)

    @pytest.mark.parametrize("mode", ["top", "all", "none"])
    def test_modes(self, tmp_path: Path, mode: str) -> None:
        """Each documented `per_asset` value loads with its limit."""
        cfg = load(tmp_path, MINIMAL + f'\n[metrics]\nper_asset = "{mode}"\nper_asset_limit = 20\n')
        assert (cfg.metrics.per_asset, cfg.metrics.per_asset_limit) == (mode, 20)

    @pytest.mark.parametrize(("line", "words"), [
        ('per_asset = "auto"', "'top', 'all' or 'none'"),
        ("per_asset = 100", "'top', 'all' or 'none'"),
        ("per_asset_limit = 0", "greater than or equal to 1"),
        ("per_asset_limit = 1000000", "less than or equal to 100000"),
        ("per_asset_limit = 2.5", "integer"),
        ("per_assets = \"all\"", "unknown key"),
    ])
    def test_bad_values_name_the_key(self, tmp_path: Path, line: str, words: str) -> None:
        """A bad `[metrics]` value is refused, naming the key and what it takes."""
        msg = error_of(tmp_path, MINIMAL + f"\n[metrics]\n{line}\n")
        assert f": metrics.{line.split()[0]}:" in msg and words in msg, msg
