"""One error hierarchy for Vigil; library errors are wrapped where they enter."""

from __future__ import annotations


class VigilError(Exception):
    """Root of every error Vigil raises on purpose."""


class ConfigError(VigilError):
    """A configuration file or value is invalid."""


class ModelError(VigilError):
    """A model file is missing, unreadable, or does not match the contract or config."""


class BrokerError(VigilError):
    """The MQTT broker cannot be reached or refused us."""


class DataError(VigilError):
    """An input file (history, events) is malformed."""
