"""Byte-level BPE tokenizers (GPT-2 family) built with the ``tokenizers`` library, and chat prompts.

From a GGUF file the vocabulary and merges come from ``tokenizer.ggml.tokens`` / ``.merges``;
control tokens (``token_type == 3``) are registered as special so that ``<|im_start|>`` in a
prompt is one token. The pre-tokenizer splits digits individually (SmolLM's ``smollm``
pre-tokenizer) before the GPT-2 byte-level split; no BOS token is added. From a Hugging Face
directory the tokenizer is ``tokenizer.json`` as shipped.
"""

from __future__ import annotations

import json
from pathlib import Path

GGUF_CONTROL = 3
# GGUF ``tokenizer.ggml.pre`` values whose pre-tokenization this module reproduces
DIGIT_SPLIT_PRE = ("smollm",)
PLAIN_PRE = ("gpt2", "default")


class Tokenizer:
    """``encode(text) -> list[int]``, ``decode(ids) -> str`` and ``chat(user) -> prompt``."""

    def __init__(self, backend, *, eos: int | None = None, bos: int | None = None,
                 chat_template: str | None = None):
        self.backend = backend
        self.eos = eos
        self.bos = bos
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens written in the text are recognised; no BOS)."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def chat(self, user: str, system: str | None = None, *, generation: bool = True) -> str:
        """The prompt text of a one-turn conversation, in the model's chat format.

        ChatML templates (``<|im_start|>role\\n...<|im_end|>``, SmolLM2 and Qwen2) are rendered
        here; any other template needs ``jinja2``. A model without a template gets ``user`` as is.
        """
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": user})
        tpl = self.chat_template
        if not tpl:
            return user
        if "<|im_start|>" in tpl:
            default = _chatml_default_system(tpl)
            if system is None and default is not None:
                messages.insert(0, {"role": "system", "content": default})
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return text + ("<|im_start|>assistant\n" if generation else "")
        try:
            import jinja2
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ValueError("this model's chat template is not ChatML; rendering it needs "
                             "jinja2: pip install jinja2") from err
        return jinja2.Template(tpl).render(messages=messages, add_generation_prompt=generation,
                                           bos_token="", eos_token="")


def _chatml_default_system(template: str) -> str | None:
    """The system message a ChatML template inserts when the conversation has none."""
    marker = "<|im_start|>system\n"
    i = template.find(marker)
    if i < 0:
        return None
    j = template.find("<|im_end|>", i)
    return template[i + len(marker): j] if j > 0 else None


def from_gguf_fields(tokens: list[str], merges: list[str], types: list[int], *, pre: str,
                     model: str, eos=None, bos=None, chat_template=None) -> Tokenizer:
    """Build the tokenizer of a GGUF file from its vocabulary, merges and token types."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    if model != "gpt2":
        raise ValueError(f"tokenizer: only byte-level BPE (tokenizer.ggml.model = 'gpt2') GGUF "
                         f"vocabularies are supported, got {model!r}")
    if pre not in DIGIT_SPLIT_PRE + PLAIN_PRE:
        raise ValueError(f"tokenizer: unsupported pre-tokenizer {pre!r} "
                         f"(supported: {DIGIT_SPLIT_PRE + PLAIN_PRE})")
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = Backend(models.BPE(vocab, pairs, fuse_unk=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre in DIGIT_SPLIT_PRE:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty == GGUF_CONTROL]
    backend.add_special_tokens(special)
    return Tokenizer(backend, eos=eos, bos=bos, chat_template=chat_template)


def from_hf_dir(path: Path) -> Tokenizer | None:
    """The tokenizer of a Hugging Face directory (``tokenizer.json``), or ``None`` without one."""
    from tokenizers import Tokenizer as Backend

    file = Path(path) / "tokenizer.json"
    if not file.exists():
        return None
    backend = Backend.from_file(str(file))
    cfg_file = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}

    def token_id(name):
        tok = cfg.get(name)
        if isinstance(tok, dict):
            tok = tok.get("content")
        return backend.token_to_id(tok) if isinstance(tok, str) else None

    template = cfg.get("chat_template")
    return Tokenizer(backend, eos=token_id("eos_token"), bos=token_id("bos_token"),
                     chat_template=template if isinstance(template, str) else None)
