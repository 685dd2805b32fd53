"""Synthetic long-context tasks generated locally: RULER's synthetic tasks, passkey retrieval.

RULER's synthetic tasks (Hsieh et al. 2024), with the configurations of its benchmark
(``scripts/synthetic.yaml`` of the RULER repository) and its prompts, scored as RULER scores them:

* ``niah_single_1/2/3``: one needle "One of the special magic numbers for <key> is: <value>." in a
  noise haystack (1) or an essay haystack (2, 3); keys are adjective-noun words, values 7-digit
  numbers (1, 2) or UUIDs (3);
* ``niah_multikey_1``: 4 needles under different keys in an essay, one asked for;
  ``niah_multikey_2/3``: a haystack made only of needles (distractors), keys words (2) or UUIDs
  with UUID values (3);
* ``niah_multivalue``: 4 values under one key, all asked for; ``niah_multiquery``: 4 keys, all
  asked for;
* ``vt`` (variable tracking): a chain ``VAR B = VAR A`` of 4 hops from a 5-digit number in a
  noise haystack, after one worked example; every variable holding the number is the answer;
* ``cwe`` (common words): a numbered list in which 10 words appear 30 times and the others 3
  (6 and 1 below 4,096 tokens), after one worked example; the 10 frequent words are the answer;
* ``fwe`` (frequent words): coded words drawn from a Zipf law (alpha = 2), the three most frequent
  (after the dots of rank 1) are the answer.

The haystacks, word lists and noise text are the package's own (``minimaxkv/data``); the prompt
templates and needle sentences are RULER's, so that scores compare with the field's. Prompts are
sized as RULER sizes them: the largest haystack whose prompt plus the task's generation length
(``Task.max_new``: 128 tokens for NIAH, 30 for vt, 120 for cwe, 50 for fwe) fits in the target
length, in tokens of the given tokenizer.

Also: ``passkey`` (Mohtashami & Jaggi 2023: a five-digit key hidden in filler text), and the
earlier ``niah_single`` / ``niah_multikey`` of this package (one needle, or the same with
distractor needles, in a noise haystack), sized so that the prompt reaches the target length.

Every task is a :class:`Task`: the ``context`` (what a compressor may see before the question),
the ``question`` (appended afterwards, ending with the start of the answer), the ``answers``, the
seed, RULER's ``metric`` and the generation length. :func:`score` is RULER's
``string_match_all`` (the fraction of answers found in the generated text, case-insensitive) or
``string_match_part`` (1 if any is found).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import numpy as np

NOISE = ("The sky above the valley is wide and pale. The road runs on past the fields. "
         "The birds circle once and land again. Nothing here has changed for a long time. ")
WORDS = ("amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo",
         "juniper", "kestrel", "lagoon", "marble", "nectar", "orchid", "pepper", "quartz",
         "raven", "saffron", "tundra", "umber", "violet", "willow", "yarrow", "zephyr")
# keys of RULER's NIAH tasks are adjective-noun pairs ("quiet-harbour"): 48 x 48 of our own
ADJECTIVES = ("ancient", "bitter", "brave", "bright", "calm", "clever", "cold", "crooked",
              "curious", "damp", "dusty", "eager", "early", "empty", "faint", "fierce", "gentle",
              "golden", "grand", "hollow", "humble", "idle", "jolly", "kind", "lazy", "little",
              "lively", "lonely", "loud", "lucky", "mellow", "misty", "narrow", "noble", "odd",
              "pale", "polite", "proud", "quiet", "rapid", "rough", "rusty", "shy", "silent",
              "silver", "steady", "tender", "wild")
NOUNS = ("anchor", "apple", "badger", "barrel", "beacon", "bridge", "candle", "canyon", "castle",
         "cloud", "comet", "copper", "crystal", "desert", "engine", "falcon", "feather", "forest",
         "garden", "glacier", "hammer", "island", "jacket", "kettle", "ladder", "lantern",
         "meadow", "mirror", "needle", "ocean", "otter", "painter", "pebble", "pillow", "planet",
         "pocket", "puzzle", "river", "saddle", "shadow", "signal", "spider", "temple", "thunder",
         "tunnel", "violin", "wagon", "window")
LEGACY = ("passkey", "niah_single", "niah_multikey")
# RULER's synthetic tasks: NIAH (haystack, key type, value type, keys, values per key, queries)
NIAH = {
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 4, 1, 4),
}
RULER = tuple(NIAH) + ("vt", "cwe", "fwe")
FAMILIES = LEGACY + RULER
# RULER's generation length per task (tokens_to_generate) and metric
MAX_NEW = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}
METRICS = ("string_match_all", "string_match_part")
DEPTHS = np.round(np.linspace(0, 100, 40)).astype(int)  # RULER's needle depths (percent)


class Task(NamedTuple):
    family: str
    context: str  # compressible part (instructions + haystack)
    question: str  # appended after compression; ends where the answer starts
    answers: tuple[str, ...]
    seed: int
    metric: str = "string_match_all"
    max_new: int = 16  # tokens to generate (RULER's tokens_to_generate for its tasks)


def string_match_all(answers, generated: str) -> float:
    """RULER's ``string_match_all`` for one prediction: the fraction of answers contained in the
    generated text, case-insensitive."""
    text = generated.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def string_match_part(answers, generated: str) -> float:
    """RULER's ``string_match_part`` for one prediction: 1 if any answer is contained in the
    generated text (case-insensitive), else 0."""
    text = generated.lower()
    return float(any(a.lower() in text for a in answers))


def score(task: Task, generated: str) -> float:
    """The task's RULER metric of ``generated`` (in [0, 1])."""
    if task.metric == "string_match_part":
        return string_match_part(task.answers, generated)
    if task.metric != "string_match_all":
        raise ValueError(f"metric: expected one of {METRICS}, got {task.metric!r}")
    return string_match_all(task.answers, generated)


def _number(rng, digits: int) -> str:
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def _sentences(text: str) -> list[str]:
    return [s + " " for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


@lru_cache(maxsize=None)
def essay() -> str:
    """The essay haystack: the package's English texts, one after the other."""
    data = resources.files("minimaxkv").joinpath("data")
    return "\n\n".join(data.joinpath(f).read_text(encoding="utf-8").strip()
                       for f in ("water.txt", "harbour.txt"))


@lru_cache(maxsize=None)
def vocabulary() -> tuple[str, ...]:
    """Distinct English words for ``cwe``: those of the package's texts (three letters or more)
    and the key words, in a fixed order."""
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", essay()) if len(w) >= 3}
    return tuple(sorted(words | set(ADJECTIVES) | set(NOUNS)))


# ------------------------------------------------------------------------------- the legacy tasks


def _needles(family: str, rng, count: int):
    """(needle sentences, question, answers, answer lead-in) of the legacy tasks."""
    words = list(rng.choice(WORDS, size=max(count, 4), replace=False))

    if family == "passkey":
        key = _number(rng, 5)
        return ([f"The pass key is {key}. Remember it. {key} is the pass key. "],
                "What is the pass key? Answer with the number only.", (key,),
                "The pass key is")
    n = 1 if family == "niah_single" else count
    values = [_number(rng, 7) for _ in range(n)]
    sentences = [f"One of the special magic numbers for {w} is: {v}. "
                 for w, v in zip(words, values)]
    return (sentences, f"What is the special magic number for {words[0]} mentioned in the "
            f"text?", (values[0],), f"The special magic number for {words[0]} is")


def _legacy(family, tokens, count_tokens, seed, count, wrap, haystack) -> Task:
    rng = np.random.default_rng(seed)
    needles, question, answers, lead = _needles(family, rng, count)
    sentences = _sentences(haystack or NOISE)
    intro = ("Some important information is hidden inside a long, mostly irrelevant text. "
             "Find it and remember it: you will be asked about it.\n\n")

    def build(n_fill: int):
        body = [sentences[i % len(sentences)] for i in range(n_fill)]
        depths = sorted(np.random.default_rng(seed + 1).integers(0, n_fill + 1, len(needles)))
        for offset, (depth, needle) in enumerate(zip(depths, needles)):
            body.insert(depth + offset, needle)
        return _split(wrap(intro + "".join(body).strip() + _MARK + "\n\n" + question) + lead)

    c, q = build(_grow(lambda n: count_tokens("".join(build(n))) >= tokens))
    return Task(family, c, q, answers, seed)


_MARK = "\x00SPLIT\x00"  # where the context ends and the question starts, inside a prompt


def _split(prompt: str) -> tuple[str, str]:
    context, question = prompt.split(_MARK)
    return context, question


def _grow(reached: Callable[[int], bool], limit: int = 1 << 20) -> int:
    """The least size n >= 1 with ``reached(n)`` (``reached`` monotone): geometric growth, then
    bisection."""
    lo, hi = 0, 1
    while not reached(hi):
        lo, hi = hi, hi * 2
        if hi > limit:
            raise ValueError("tokens: the task cannot reach that many tokens")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi


# ---------------------------------------------------------------------------- RULER's tasks


def _draw(kind: str, rng) -> str:
    """A random key or value of RULER's type: an adjective-noun word, a 7-digit number, a UUID."""
    if kind == "numbers":
        return _number(rng, 7)
    if kind == "words":
        return f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]}-{NOUNS[rng.integers(len(NOUNS))]}"
    return str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)),
                         version=4))


def _distinct(kind: str, rng, count: int, avoid=()) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        x = _draw(kind, rng)
        if x not in out and x not in avoid:
            out.append(x)
    return out


def _niah(name: str, seed: int):
    """(build(size) -> (user message with the split mark, answer lead-in), answers)."""
    hay, kind_k, kind_v, n_keys, n_values, n_queries = NIAH[name]
    rng = np.random.default_rng([seed, RULER.index(name), 0])
    keys = _distinct(kind_k, rng, n_keys)
    values = [_distinct(kind_v, rng, n_values) for _ in keys]
    needles = [f"One of the special magic {kind_v} for {k} is: {v}."
               for k, vs in zip(keys, values) for v in vs]
    needles = [needles[i] for i in rng.permutation(len(needles))]
    asked = sorted(rng.choice(n_keys, n_queries, replace=False).tolist())
    queries = [keys[i] for i in asked]
    answers = tuple(v for i in asked for v in values[i])
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    where = rng.random(len(needles))  # depths as fractions (noise and needle haystacks)
    depths = rng.choice(DEPTHS, len(needles), replace=False)  # percent (essay haystack)
    if len(answers) == 1:  # RULER's singular wording for one answer
        kind = kind_v[:-1]
        head = (f"A special magic {kind} is hidden within the following text. Make sure to "
                f"memorize it. I will quiz you about the {kind} afterwards.\n")
        question = f"What is the special magic {kind} for {query} mentioned in the provided text?"
        lead = f" The special magic {kind} for {query} mentioned in the provided text is"
    else:
        head = (f"Some special magic {kind_v} are hidden within the following text. Make sure to "
                f"memorize it. I will quiz you about the {kind_v} afterwards.\n")
        question = (f"What are all the special magic {kind_v} for {query} mentioned in the "
                    "provided text?")
        lead = f" The special magic {kind_v} for {query} mentioned in the provided text are"
    words = essay().split()
    fill_rng = np.random.default_rng([seed, RULER.index(name), 1])  # distractors: prefix-stable
    distractors: list[str] = []
    seen = set(keys)

    def haystack(size: int) -> str:
        if hay == "essay":
            text = " ".join(words[i % len(words)] for i in range(size))
            sents = [x.strip() for x in _sentences(text)]
            cuts = [0] + sorted(int(len(sents) * d / 100) for d in depths) + [len(sents)]
            parts = []
            for i in range(len(cuts) - 1):
                parts.append(" ".join(sents[cuts[i]:cuts[i + 1]]))
                if i < len(needles):
                    parts.append(needles[i])
            return " ".join(p for p in parts if p)
        if hay == "noise":
            lines = [NOISE.strip()] * size
        else:
            while len(distractors) < size:  # distinct keys, none of the needles'
                if kind_k == "words" and len(seen) >= len(ADJECTIVES) * len(NOUNS):
                    raise ValueError(f"{name}: more distractor needles than distinct keys")
                k = _draw(kind_k, fill_rng)
                if k not in seen:
                    seen.add(k)
                    distractors.append(f"One of the special magic {kind_v} for {k} is: "
                                       f"{_draw(kind_v, fill_rng)}.")
            lines = distractors[:size]
        at = sorted((np.floor(where * (size + 1)).astype(int)).tolist())
        for offset, (i, needle) in enumerate(zip(at, needles)):
            lines.insert(i + offset, needle)
        return "\n".join(lines)

    def build(size: int):
        return head + haystack(size) + "\n" + _MARK + question, lead

    return build, answers


def _vt_chain(rng, hops: int, letters: int):
    names = _distinct_names(rng, hops + 1, letters)
    value = str(int(rng.integers(10000, 100000)))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]
    return names, value, chain


def _distinct_names(rng, count: int, letters: int) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        x = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, letters))
        if x not in out:
            out.append(x)
    return out


def _vt(seed: int, hops: int = 4):
    """RULER's variable tracking (one chain of ``hops`` hops in the noise haystack)."""

    def instance(rng, letters):
        names, value, chain = _vt_chain(rng, hops, letters)
        where = np.sort(rng.random(len(chain)))

        def text(size: int) -> str:
            lines = [NOISE.strip()] * size
            at = np.floor(where * (size + 1)).astype(int)
            for j, (i, line) in enumerate(zip(at, chain)):
                lines.insert(int(i) + j, line)
            return "\n".join(lines).replace(". \n", ".\n")

        head = ("Memorize and track the chain(s) of variable assignment hidden in the following "
                "text.\n\n")
        question = (f"Question: Find all variables that are assigned the value {value} in the "
                    "text above.")
        lead = (f" Answer: According to the chain(s) of variable assignment in the text above, "
                f"{hops + 1} variables are assigned the value {value}, they are: ")
        return names, head, text, question, lead

    rng = np.random.default_rng([seed, RULER.index("vt"), 0])
    ex_names, ex_head, ex_text, ex_q, ex_lead = instance(rng, 3)
    names, head, text, question, lead = instance(rng, 5)
    example_size = 16  # a short worked example (~450 tokens), as RULER prepends one
    example = ex_head + ex_text(example_size) + "\n" + ex_q + ex_lead + " ".join(ex_names) + "\n"

    def build(size: int):
        return example + head + text(size) + "\n" + _MARK + question, lead

    return build, tuple(names)


def _cwe(seed: int, tokens: int, common: int = 10):
    """RULER's common words extraction: 10 words x 30 (6 below 4,096 tokens), the others x 3
    (1), after one worked example (40 words x 10 / x 3; 20 x 3 / x 1 below 4,096)."""
    vocab = list(vocabulary())
    order = np.random.default_rng([seed, RULER.index("cwe"), 0]).permutation(len(vocab))
    short = tokens < 4096
    rep_c, rep_u = (6, 1) if short else (30, 3)
    ex_n, ex_c, ex_u = (20, 3, 1) if short else (40, 10, 3)
    example_words = [vocab[i] for i in order[:ex_n]]
    pool = [vocab[i] for i in order[ex_n:]]
    head = ("Below is a numbered list of words. In these words, some appear more often than "
            "others. Memorize the ones that appear most often.\n")
    question = f"Question: What are the {common} most common words in the above list?"
    lead = f" Answer: The top {common} words that appear most often in the list are:"

    def listing(words, rc, ru, rng):
        items = words[:common] * rc + words[common:] * ru
        items = [items[i] for i in rng.permutation(len(items))]
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))

    ex = (head + listing(example_words, ex_c, ex_u, np.random.default_rng([seed, RULER.index("cwe"), 1])) + "\n" +
          question + lead + " " + " ".join(f"{i + 1}. {w}" for i, w in
                                           enumerate(example_words[:common])) + "\n")

    def build(size: int):
        if size > len(pool):
            raise ValueError(f"cwe: {size} distinct words needed, the vocabulary has "
                             f"{len(pool)}")
        words = pool[:size]
        return ex + head + listing(words, rep_c, rep_u, np.random.default_rng([seed, RULER.index("cwe"), 2])) + \
            "\n" + _MARK + question, lead

    return build, tuple(pool[:common]), len(pool)


def _fwe(seed: int, tokens: int, alpha: float = 2.0, letters: int = 6):
    """RULER's frequent words extraction: a vocabulary of ``(tokens - 50) // 50`` coded words (6
    random letters), word k appearing floor(N k^-alpha / zeta(alpha)) times in random order, rank
    1 replaced by dots; the answer is ranks 2-4."""
    from scipy.special import zeta

    rng = np.random.default_rng([seed, RULER.index("fwe"), 0])
    size_v = max((tokens - MAX_NEW["fwe"]) // 50, 4)
    vocab: list[str] = []
    while len(vocab) < size_v:
        w = "".join(chr(97 + int(c)) for c in rng.integers(0, 26, letters))
        if w not in vocab:
            vocab.append(w)
    vocab[0] = "..."
    z = float(zeta(alpha))
    head = ("Read the following coded text and track the frequency of each coded word. Find the "
            "three most frequently appeared coded words. ")
    question = ("Question: Do not provide any explanation. Please ignore the dots '....'. What "
                "are the three most frequently appeared words in the above coded text?")
    lead = (" Answer: According to the coded text above, the three most frequently appeared "
            "words are:")

    def build(size: int):
        counts = np.floor(size * np.arange(1, size_v + 1, dtype=np.float64) ** -alpha / z)
        words = [w for w, c in zip(vocab, counts.astype(int)) for _ in range(c)]
        order = np.random.default_rng([seed, RULER.index("fwe"), 1, len(words)]).permutation(
            len(words))
        return head + " ".join(words[i] for i in order) + "\n" + _MARK + question, lead

    return build, tuple(vocab[1:4])


def _fit_ruler(build, tokens: int, max_new: int, count_tokens, wrap, name: str,
               limit: int | None = None):
    """The largest haystack size whose prompt plus ``max_new`` tokens fits in ``tokens``."""

    def prompt(size: int) -> str:
        user, lead = build(size)
        return wrap(user) + lead

    def fits(size: int) -> bool:
        return count_tokens(prompt(size).replace(_MARK, "")) + max_new <= tokens

    if not fits(1):
        raise ValueError(f"{name}: {tokens} tokens cannot hold the task's prompt and its "
                         f"{max_new} generated tokens")
    over = _grow(lambda n: (limit is not None and n > limit) or not fits(n))
    return _split(prompt(over - 1))


def _ruler(name, tokens, count_tokens, seed, wrap, max_new=None) -> Task:
    limit = None
    if name in NIAH:
        build, answers = _niah(name, seed)
    elif name == "vt":
        build, answers = _vt(seed)
    elif name == "cwe":
        build, answers, limit = _cwe(seed, tokens)
    else:
        build, answers = _fwe(seed, tokens)
    max_new = max_new or MAX_NEW["niah" if name in NIAH else name]
    context, question = _fit_ruler(build, tokens, max_new, count_tokens, wrap, name, limit)
    return Task(name, context, question, answers, seed, "string_match_all", max_new)


def make(family: str, tokens: int, count_tokens: Callable[[str], int], *, seed: int = 0,
         count: int = 4, chat: Callable[[str], str] | None = None,
         haystack: str | None = None, max_new: int | None = None) -> Task:
    """Generate one task whose full prompt is about ``tokens`` tokens long.

    Args:
        family: one of :data:`FAMILIES` (RULER's tasks :data:`RULER`, or :data:`LEGACY`).
        tokens: target length in tokens: for RULER's tasks, the prompt plus the task's
            generation length fits in it (the largest haystack that does); for the legacy tasks
            the prompt reaches it.
        count_tokens: ``text -> number of tokens`` (e.g. ``len(tokenizer.encode(text))``).
        seed: the random seed (needles, keys, values, depths, words).
        count: needles of the legacy ``niah_multikey`` (RULER's tasks have their fixed
            configurations).
        chat: ``user message -> prompt`` (e.g. ``tokenizer.chat``); the message is the
            instruction, the haystack and the question, and the answer lead-in follows the prompt.
        haystack: filler text of the legacy tasks (default: a noise paragraph).
        max_new: the generation length of a RULER task, which its sizing leaves room for
            (default RULER's, :data:`MAX_NEW`); the legacy tasks' is 16.
    """
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    if count < 1:
        raise ValueError(f"count: expected >= 1, got {count}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens: expected a positive int, got {tokens!r}")
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int)
                                or max_new < 1):
        raise ValueError(f"max_new: expected a positive int, got {max_new!r}")
    wrap = chat or (lambda user: user + "\n")
    if family in RULER:
        return _ruler(family, tokens, count_tokens, seed, wrap, max_new)
    return _legacy(family, tokens, count_tokens, seed, count, wrap, haystack)
