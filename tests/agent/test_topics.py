"""The hot-path topic matcher agrees with paho's own on every filter and topic."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from hypothesis import given
from hypothesis import strategies as st

from agent.topics import Filter, first_match

LEVEL = st.sampled_from(["plant", "pump-1", "temp", "", "$SYS", "a", "b"])
TOPICS = st.lists(LEVEL, min_size=1, max_size=5).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    plain = LEVEL.filter(lambda s: s != "$SYS")
    levels = draw(st.lists(st.one_of(plain, st.just("+")), min_size=0, max_size=4))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    return "/".join(levels)


@given(filters(), TOPICS)
def test_same_answer_as_paho(topic_filter: str, topic: str) -> None:
    assert Filter(topic_filter).matches(topic.split("/")) == mqtt.topic_matches_sub(topic_filter, topic)


def test_cases() -> None:
    assert Filter("plant/+/+").matches(["plant", "p1", "temp"])
    assert not Filter("plant/+/+").matches(["plant", "p1"])
    assert Filter("plant/#").matches(["plant"])
    assert not Filter("#").matches(["$SYS", "broker", "load"])
    assert not Filter("+/broker").matches(["$SYS", "broker"])
    assert Filter("$SYS/#").matches(["$SYS", "broker", "load"])


def test_first_match_takes_the_first_in_order() -> None:
    fs = [(0, Filter("plant/+/temp")), (1, Filter("plant/#")), (2, Filter("other/+"))]
    assert first_match(fs, "plant/p1/temp") == 0
    assert first_match(fs, "plant/p1/vib") == 1
    assert first_match(fs, "other/x") == 2
    assert first_match(fs, "elsewhere/x") is None
