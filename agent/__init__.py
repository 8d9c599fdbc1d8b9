"""Vigil edge agent: MQTT sensor readings in, failure-risk alerts and metrics out."""

__version__ = "0.1.0"
