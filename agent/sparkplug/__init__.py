"""Eclipse Sparkplug B 3.0 consumer: payload codec, host-side session state, Primary Host STATE.

`codec` reads and writes the wire format, `host` keeps each edge node's session (births,
aliases, seq, deaths) and turns messages into readings, `primary` publishes this host's STATE.
"""

from agent.sparkplug.codec import ChannelMap, MessageType, Topic, parse_topic
from agent.sparkplug.host import Birth, Command, Host, HostOptions, Output
from agent.sparkplug.reasons import SparkplugReason

__all__ = ["Birth", "ChannelMap", "Command", "Host", "HostOptions", "MessageType", "Output",
           "SparkplugReason", "Topic", "parse_topic"]
