"""(e) Causal prefill + decoding on a synthetic token stream: error per position, bytes over time.

:func:`minimaxkv.causal.run` compresses the stream block by block (summary of ``budget`` atoms +
an exact buffer of ``block`` tokens, merge-reduce) during the prefill and while decoding; every
position's query is scored against exact causal attention over all tokens so far.
"""

from __future__ import annotations

import time

from tqdm import tqdm

from minimaxkv.experiments import common
from minimaxkv.rules import DEFAULTS

RULES = DEFAULTS["causal"]  # those of `minimaxkv causal`

CONFIGS = {
    "tiny": {"prefill": 64, "decode": 32, "budget": 16, "block": 16, "d": 16, "dv": 8,
             "rules": ["minimax", "streaming_llm", "snapkv"], "seed": 0},
    "quick": {"prefill": 1024, "decode": 256, "budget": 128, "block": 64, "d": 32, "dv": 16,
              "rules": list(RULES), "seed": 0},
    "full": {"prefill": 8192, "decode": 1024, "budget": 512, "block": 128, "d": 64, "dv": 64,
             "rules": list(RULES), "seed": 0},
}

FLOAT64 = True  # computed in float64: common.compute sets it for the run


def run(config: dict) -> dict:
    """``{"rules": {rule: {"errors": [T], "nbytes": [T], "prefill_risk", "decode_risk", ...}}}``."""
    import jax
    import numpy as np

    from minimaxkv import causal, rules, synthetic
    from minimaxkv.cache import atom_bytes

    T = config["prefill"] + config["decode"]
    st = synthetic.stream(jax.random.PRNGKey(config["seed"]), T=T, d=config["d"], dv=config["dv"])
    itemsize = np.dtype(st.keys.dtype).itemsize
    out = {}
    for name in tqdm(config["rules"], desc="causal"):
        hyper = {"block": config["block"]} if name.startswith("minimax") else {}
        t0 = time.perf_counter()
        res = causal.run(rules.get(name, theta=st.theta, **hyper), st.keys, st.values, st.queries,
                         config["budget"], prefill=config["prefill"], block=config["block"],
                         key=jax.random.PRNGKey(config["seed"]), progress=True)
        out[name] = {"errors": res.errors.tolist(), "nbytes": res.nbytes.tolist(),
                     "prefill_risk": res.prefill_risk, "decode_risk": res.decode_risk,
                     "compress_seconds": res.compress_seconds, "compressions": res.compressions,
                     "seconds": time.perf_counter() - t0}
    # the uncompressed cache: keys and values of every token read so far (no log-weights)
    per_token = atom_bytes(config["d"], config["dv"], itemsize, logw=False)
    full = ((np.arange(T) + 1) * per_token).tolist()
    return {"rules": out, "full_nbytes": full, "prefill": config["prefill"], "T": T}


if __name__ == "__main__":
    raise SystemExit(common.main("causal"))
