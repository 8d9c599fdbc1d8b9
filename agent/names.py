"""Names that reach MQTT topics or metric labels: broker URLs, asset and channel names."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import ConfigError

_FORBIDDEN = frozenset("+#/\x00")
MAX_NAME_LEN = 128


def valid_name(name: str) -> bool:
    """True when `name` may stand as one topic level or label value (no + # / NUL, not empty)."""
    return 0 < len(name) <= MAX_NAME_LEN and not (_FORBIDDEN & set(name)) and name.isprintable()


@dataclass(frozen=True)
class BrokerURL:
    """A parsed `mqtt://host:port` or `mqtts://host:port` address."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Parse and validate a broker URL; raise ConfigError with the reason."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"broker url {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"broker url {url!r}: no host")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"broker url {url!r}: bad port") from exc
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port if port is not None else (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
