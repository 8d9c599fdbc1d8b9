"""Why Sparkplug messages are dropped: the Sparkplug members of agent.ingest.Reason.

NO_BIRTH (`no_birth`), ALIAS (`unknown_alias`) and SEQUENCE (`sequence`) are Sparkplug session
faults: the host cannot decode a message until the edge node is born again, so each also leads
to a rebirth request. They live in the one Reason enum, so the rejection counter knows them.
"""

from __future__ import annotations

from agent.ingest import Reason

SparkplugReason = Reason

__all__ = ["SparkplugReason"]
