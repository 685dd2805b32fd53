"""Generated long-context tasks: sizes, seeds, needles present, answers recoverable, scoring."""

import re

import pytest

from minimaxkv import tasks


def count(text):  # a stand-in tokenizer: words
    return len(text.split())


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_task_length_seed_and_needles(family):
    t = tasks.make(family, 800, count, seed=3, count=4)
    assert 800 <= count(t.context + t.question) <= 800 + 40  # one filler sentence + needle over
    assert t == tasks.make(family, 800, count, seed=3, count=4)
    assert t != tasks.make(family, 800, count, seed=4, count=4)
    for a in t.answers:
        assert a in t.context and a not in t.question or family == "vt"
    assert tasks.score(t, " ".join(t.answers)) == 1.0
    assert tasks.score(t, "nothing") == 0.0


def test_variable_tracking_chain_resolves_to_the_answers():
    t = tasks.make("vt", 600, count, seed=1, count=5)
    value = re.search(r"value (\d+)", t.question).group(1)
    assign = dict(re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", t.context))
    holds = {v for v in assign if _resolve(assign, v) == value}
    assert holds == set(t.answers) and len(holds) == 5


def _resolve(assign, v):
    while v in assign:
        v = assign[v]
    return v


def test_multivalue_and_multiquery_needles():
    mv = tasks.make("niah_multivalue", 500, count, seed=2, count=3)
    word = re.search(r"numbers for (\w+) mentioned", mv.question).group(1)
    found = re.findall(rf"numbers for {word} is: (\d+)", mv.context)
    assert sorted(found) == sorted(mv.answers)
    mq = tasks.make("niah_multiquery", 500, count, seed=2, count=3)
    words = re.search(r"numbers for (.+) mentioned", mq.question).group(1).split(", ")
    pairs = dict(re.findall(r"numbers for (\w+) is: (\d+)", mq.context))
    assert tuple(pairs[w] for w in words) == mq.answers


def test_partial_score_and_errors():
    t = tasks.make("niah_multivalue", 300, count, seed=0, count=4)
    assert tasks.score(t, t.answers[0] + " " + t.answers[2]) == 0.5
    with pytest.raises(ValueError, match="family"):
        tasks.make("nope", 100, count)
    with pytest.raises(ValueError, match="count"):
        tasks.make("vt", 100, count, count=0)
