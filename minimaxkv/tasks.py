"""Synthetic long-context tasks generated locally: passkey retrieval, needle-in-a-haystack, variable tracking.

Task families (after Mohtashami & Jaggi 2023, passkey; Hsieh et al. 2024, RULER):

* ``passkey``: a five-digit key hidden at a random depth in filler text;
* ``niah_single``: one needle "the special magic number for <word> is <7 digits>" in a noise
  haystack; ``niah_multikey``: the same with distractor needles under other words;
  ``niah_multivalue``: several numbers under the same word, all asked for;
  ``niah_multiquery``: several needles, several words asked for;
* ``vt`` (variable tracking): a chain of assignments ``VAR B = VAR A`` starting from a number,
  scattered in the haystack; the answer is every variable holding that number.

Every task is a :class:`Task`: the ``context`` (what a compressor may see before the question),
the ``question`` (appended afterwards, ending with the start of the answer), the list of
``answers`` and a seed. Prompts are sized in tokens of a given tokenizer: the haystack grows
until ``context + question`` reaches the target length. Scoring is string matching: the fraction
of answers found in the generated text (RULER's ``string_match_all``).
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import numpy as np

NOISE = ("The sky above the valley is wide and pale. The road runs on past the fields. "
         "The birds circle once and land again. Nothing here has changed for a long time. ")
WORDS = ("amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo",
         "juniper", "kestrel", "lagoon", "marble", "nectar", "orchid", "pepper", "quartz",
         "raven", "saffron", "tundra", "umber", "violet", "willow", "yarrow", "zephyr")
FAMILIES = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt")


class Task(NamedTuple):
    family: str
    context: str  # compressible part (instructions + haystack)
    question: str  # appended after compression; ends where the answer starts
    answers: tuple[str, ...]
    seed: int


def score(task: Task, generated: str) -> float:
    """Fraction of the task's answers that occur in ``generated``."""
    return sum(a in generated for a in task.answers) / len(task.answers)


def _number(rng, digits: int) -> str:
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def _needles(family: str, rng, count: int):
    """(needle sentences, question, answers, answer lead-in)."""
    words = list(rng.choice(WORDS, size=max(count, 4), replace=False))

    def needle(word, value):
        return f"One of the special magic numbers for {word} is: {value}. "

    if family == "passkey":
        key = _number(rng, 5)
        return ([f"The pass key is {key}. Remember it. {key} is the pass key. "],
                "What is the pass key? Answer with the number only.", (key,),
                "The pass key is")
    if family in ("niah_single", "niah_multikey"):
        n = 1 if family == "niah_single" else count
        values = [_number(rng, 7) for _ in range(n)]
        sentences = [needle(w, v) for w, v in zip(words, values)]
        return (sentences, f"What is the special magic number for {words[0]} mentioned in the "
                f"text?", (values[0],), f"The special magic number for {words[0]} is")
    if family == "niah_multivalue":
        values = [_number(rng, 7) for _ in range(count)]
        return ([needle(words[0], v) for v in values],
                f"What are all the special magic numbers for {words[0]} mentioned in the text?",
                tuple(values), f"The special magic numbers for {words[0]} are")
    if family == "niah_multiquery":
        values = [_number(rng, 7) for _ in range(count)]
        asked = words[:count]
        return ([needle(w, v) for w, v in zip(words, values)],
                f"What are the special magic numbers for {', '.join(asked)} mentioned in the text?",
                tuple(values), f"The special magic numbers for {', '.join(asked)} are")
    if family == "vt":
        value = _number(rng, 5)
        names = ["".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 3)) for _ in range(count)]
        chain = [f"VAR {names[0]} = {value}. "] + [
            f"VAR {b} = VAR {a}. " for a, b in zip(names, names[1:])]
        return (chain, f"Find all variables that are assigned the value {value} in the text.",
                tuple(names), f"The variables assigned the value {value} are:")
    raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")


def make(family: str, tokens: int, count_tokens: Callable[[str], int], *, seed: int = 0,
         count: int = 4, chat: Callable[[str], str] | None = None,
         haystack: str | None = None) -> Task:
    """Generate one task whose full prompt is about ``tokens`` tokens long.

    Args:
        family: one of :data:`FAMILIES`.
        tokens: target length of ``context + question`` in tokens.
        count_tokens: ``text -> number of tokens`` (e.g. ``len(tokenizer.encode(text))``).
        seed: the random seed (needle values, depths, words).
        count: needles for the multi-needle families, chain length for ``vt``.
        chat: ``user message -> prompt`` (e.g. ``tokenizer.chat``); the message is the
            instruction, the haystack and the question, and the answer lead-in follows the prompt.
        haystack: filler text repeated to length (default: a noise paragraph).
    """
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    if count < 1:
        raise ValueError(f"count: expected >= 1, got {count}")
    rng = np.random.default_rng(seed)
    needles, question, answers, lead = _needles(family, rng, count)
    filler = haystack or NOISE
    sentences = [s + " " for s in re.split(r"(?<=[.!?])\s+", " ".join(filler.split())) if s]
    intro = ("Some important information is hidden inside a long, mostly irrelevant text. "
             "Find it and remember it: you will be asked about it.\n\n")
    wrap = chat or (lambda user: user + "\n")
    marker = "\x00SPLIT\x00"

    def build(n_fill: int):
        body = [sentences[i % len(sentences)] for i in range(n_fill)]
        depths = sorted(np.random.default_rng(seed + 1).integers(0, n_fill + 1, len(needles)))
        for offset, (depth, needle) in enumerate(zip(depths, needles)):
            body.insert(depth + offset, needle)
        prompt = wrap(intro + "".join(body).strip() + marker + "\n\n" + question) + lead
        context, rest = prompt.split(marker)
        return context, rest

    lo, hi = 0, 1
    while True:  # grow the haystack geometrically, then bisect on its size
        c, q = build(hi)
        if count_tokens(c + q) >= tokens:
            break
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            raise ValueError(f"tokens: cannot reach {tokens} tokens")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c, q = build(mid)
        lo, hi = (mid, hi) if count_tokens(c + q) < tokens else (lo, mid)
    c, q = build(hi)
    return Task(family, c, q, answers, seed)
