"""`vigil-agent top`: the operator's live view over MQTT (fleet state, rendering, keys, link)."""
