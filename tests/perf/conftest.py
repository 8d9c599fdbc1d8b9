"""tests/perf uses the tiny model file of tests/agent."""

from tests.agent.conftest import model_file

__all__ = ["model_file"]
