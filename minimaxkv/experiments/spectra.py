"""(b, synthetic) Response-covariance spectra of every synthetic family.

For each family, the exact eigenvalues of the response covariance G (and of its value-centred twin
Gamma) on the family's own queries, normalised by the top eigenvalue, and the eps-rank at several
relative tolerances (the lookup family is probed by its own law: every atom's query once): how many atoms a value-linear summary needs (L2) to keep the tail below eps.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from minimaxkv.experiments import common

CONFIGS = {
    "tiny": {"n": 16, "p": 8, "d": 16, "dv": 8, "eps": [0.01, 0.05, 0.1], "seed": 0},
    "quick": {"n": 256, "p": 128, "d": 32, "dv": 16, "eps": [0.01, 0.05, 0.1], "seed": 0},
    "full": {"n": 1024, "p": 512, "d": 64, "dv": 64, "eps": [0.01, 0.05, 0.1], "seed": 0},
}

FLOAT64 = True  # computed in float64: common.compute sets it for the run


def run(config: dict) -> dict:
    """``{"families": {family: {"eigs": [...], "eigs_centred": [...], "eps_rank": {eps: m}}}}``."""
    import jax
    import jax.numpy as jnp

    from minimaxkv import compressibility, synthetic

    n = config["n"]
    out = {}
    for family in tqdm(sorted(synthetic.FAMILIES), desc="spectra"):
        kw = dict(n=n, d=max(config["d"], n) if family == "lookup" else config["d"],
                  dv=config["dv"], p=n if family == "lookup" else config["p"], dtype=jnp.float64)
        inst = synthetic.make(family, jax.random.PRNGKey(config["seed"]), **kw)
        row = {}
        for key, centred in (("eigs", False), ("eigs_centred", True)):
            e = np.asarray(compressibility.spectrum(inst.queries, inst.cache, centred=centred))
            row[key] = (e / e[0]).tolist() if e[0] > 0 else e.tolist()
        e = np.asarray(row["eigs"])
        row["eps_rank"] = {f"{eps:g}": compressibility.eps_rank(e, eps) for eps in config["eps"]}
        out[family] = row
    return {"families": out, "n": n}


if __name__ == "__main__":
    raise SystemExit(common.main("spectra"))
