"""Why Sparkplug messages are dropped, beyond the reasons every codec shares (agent.ingest.Reason).

These three are Sparkplug session faults: the host cannot decode a message until the edge node
is born again, so each also leads to a rebirth request. docs/sparkplug-integration.patch adds
the same members to `agent.ingest.Reason` and turns this class into an alias of it, so the
rejection counter knows them; the values (the `reason` label) stay the same.
"""

from __future__ import annotations

from enum import StrEnum


class SparkplugReason(StrEnum):
    """The `reason` label for messages a Sparkplug host cannot use."""

    NO_BIRTH = "no_birth"      # data from an edge node or device with no current birth
    ALIAS = "unknown_alias"    # a metric alias (or name) its birth did not define
    SEQUENCE = "sequence"      # a seq number already passed: a duplicate or a message too late

    @property
    def is_rejection(self) -> bool:
        return True
