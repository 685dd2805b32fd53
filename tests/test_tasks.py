"""Generated long-context tasks: sizes, seeds, needles present, answers recoverable from the text
by an independent parser, RULER's scoring."""

import re
from collections import Counter

import numpy as np
import pytest
from scipy.special import zeta

from minimaxkv import tasks


def count(text):  # a stand-in tokenizer: words
    return len(text.split())


@pytest.mark.parametrize("family", tasks.LEGACY)
def test_legacy_task_length_seed_and_needles(family):
    t = tasks.make(family, 800, count, seed=3, count=4)
    assert 800 <= count(t.context + t.question) <= 800 + 40  # one filler sentence + needle over
    assert t == tasks.make(family, 800, count, seed=3, count=4)
    assert t != tasks.make(family, 800, count, seed=4, count=4)
    for a in t.answers:
        assert a in t.context and a not in t.question
    assert tasks.score(t, " ".join(t.answers)) == 1.0
    assert tasks.score(t, "nothing") == 0.0


@pytest.mark.parametrize("family", tasks.RULER)
@pytest.mark.parametrize("tokens", [1500, 4096])
def test_ruler_task_fills_its_length_and_is_reproducible(family, tokens):
    """RULER's sizing: the prompt plus the task's generation length fits in ``tokens``, and the
    haystack is the largest that does (one more unit of haystack would not fit: the prompt is
    within a few haystack units of the limit)."""
    t = tasks.make(family, tokens, count, seed=3)
    used = count(t.context + t.question) + t.max_new
    assert used <= tokens
    assert used > tokens - 60, (used, tokens)  # a haystack unit is < 60 words in every task
    assert t.max_new == tasks.MAX_NEW["niah" if family.startswith("niah") else family]
    assert t.metric == "string_match_all"
    assert t == tasks.make(family, tokens, count, seed=3)
    assert t.answers != tasks.make(family, tokens, count, seed=4).answers
    for a in t.answers:
        assert a in t.context and a not in t.question
    assert tasks.score(t, " ".join(a.upper() for a in t.answers)) == 1.0  # case-insensitive
    assert tasks.score(t, "nothing") == 0.0


NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")


@pytest.mark.parametrize("family", list(tasks.NIAH))
def test_niah_needles_answer_the_question(family):
    """Parse every needle of the context; the keys the question asks for hold exactly the
    answers; the configuration (keys, values per key, queries, key and value types, haystack) is
    RULER's for that task."""
    hay, kind_k, kind_v, n_keys, n_values, n_queries = tasks.NIAH[family]
    t = tasks.make(family, 2000, count, seed=1)
    needles = NEEDLE.findall(t.context)
    assert all(kind == kind_v for kind, _, _ in needles)
    by_key = {}
    for _, k, v in needles:
        by_key.setdefault(k, []).append(v)
    asked = re.search(r"for (.+) mentioned", t.question).group(1)
    asked = [k for k in re.split(r", and |, ", asked)]
    assert len(asked) == n_queries
    assert sorted(v for k in asked for v in by_key[k]) == sorted(t.answers)
    assert all(len(by_key[k]) == n_values for k in asked)
    key_re = r"[a-z]+-[a-z]+" if kind_k == "words" else r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-"
    assert all(re.fullmatch(key_re, k) or re.match(key_re, k) for k in by_key)
    value_re = r"\d{7}" if kind_v == "numbers" else r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}"
    assert all(re.fullmatch(value_re, v) for _, _, v in needles)
    if hay == "needle":  # the haystack is needles: many keys, each asked key once
        assert len(by_key) > 20 and len(needles) == len(by_key)
    else:
        assert len(by_key) == n_keys and len(needles) == n_keys * n_values
    if hay == "noise":
        body = t.context.split("afterwards.\n", 1)[1].strip().split("\n")
        assert {line for line in body if not NEEDLE.fullmatch(line)} == {tasks.NOISE.strip()}
    if hay == "essay":
        assert "water cycle" in t.context.lower()
    singular = n_values * n_queries == 1
    assert ("What is the special magic" in t.question) == singular


def test_variable_tracking_chain_resolves_to_the_answers():
    t = tasks.make("vt", 1500, count, seed=1)
    example, task = t.context.rsplit("they are: ", 1)  # the worked example comes first
    ex_assign = dict(re.findall(r"VAR ([A-Z]{3}) = (?:VAR )?(\w+)", example))
    ex_answer = task.split("\n", 1)[0].split()
    assert len(ex_assign) == 5 and set(ex_answer) == set(ex_assign)
    value = re.search(r"assigned the value (\d{5}) in", t.question).group(1)
    assign = dict(re.findall(r"VAR ([A-Z]{5}) = (?:VAR )?(\w+)", task))
    holds = {v for v in assign if _resolve(assign, v) == value}
    assert holds == set(t.answers) and len(holds) == 5
    assert "5 variables are assigned the value" in t.question


def _resolve(assign, v):
    while v in assign:
        v = assign[v]
    return v


@pytest.mark.parametrize("tokens,common,rare", [(1500, 6, 1), (4096, 30, 3)])
def test_common_words_are_the_ten_most_frequent(tokens, common, rare):
    t = tasks.make("cwe", tokens, count, seed=2)
    listing = t.context.rsplit("appear most often.\n", 1)[1]
    counts = Counter(re.findall(r"\d+\. (\w+)", listing))
    top = [w for w, _ in counts.most_common(10)]
    assert set(top) == set(t.answers) and len(t.answers) == 10
    assert {counts[w] for w in t.answers} == {common}
    assert {c for w, c in counts.items() if w not in t.answers} == {rare}
    numbers = [int(x) for x in re.findall(r"(\d+)\. \w+", listing)]
    assert numbers == list(range(1, len(numbers) + 1))


def test_frequent_words_follow_zipf():
    t = tasks.make("fwe", 4096, count, seed=0)
    text = t.context.split("coded words. ", 1)[1]
    counts = Counter(text.split())
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and tuple(ranked[1:4]) == t.answers
    n = len(text.split())
    total = sum(counts.values())
    assert total == n
    # word k appears floor(N k^-2 / zeta(2)) times for the N that sized the text
    cs = np.array(sorted(counts.values(), reverse=True), float)
    N = cs[0] * zeta(2.0)
    k = np.arange(1, len(cs) + 1)
    assert np.all(np.abs(cs - np.floor(N * k ** -2.0 / zeta(2.0))) <= 1 + 1e-6 * N)
    assert len(counts) <= (4096 - 50) // 50


def test_scoring_is_rulers():
    t = tasks.make("niah_multivalue", 1500, count, seed=0)
    assert tasks.score(t, t.answers[0] + " " + t.answers[2]) == 0.5
    assert tasks.string_match_all(["Ab", "cd"], "xx AB yy") == 0.5
    assert tasks.string_match_part(["Ab", "cd"], "xx AB yy") == 1.0
    assert tasks.string_match_part(["Ab", "cd"], "xx") == 0.0
    assert tasks.score(t._replace(metric="string_match_part"), t.answers[1]) == 1.0
    with pytest.raises(ValueError, match="metric"):
        tasks.score(t._replace(metric="exact"), "x")


def test_errors():
    with pytest.raises(ValueError, match="family"):
        tasks.make("nope", 100, count)
    with pytest.raises(ValueError, match="count"):
        tasks.make("passkey", 100, count, count=0)
    with pytest.raises(ValueError, match="cannot hold"):
        tasks.make("niah_single_1", 100, count)
    with pytest.raises(ValueError, match="tokens"):
        tasks.make("vt", 0, count)
