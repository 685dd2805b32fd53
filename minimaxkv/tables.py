"""The tables the commands print and the experiments draw: the synthetic families'
compressibility and bounds (``minimaxkv report``) and every rule's held-out risk beside two
references (``minimaxkv compare``; the ``risk_vs_budget`` and ``aware_vs_agnostic``
experiments)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from tqdm import tqdm

from . import bounds, compressibility, synthetic
from . import budgets as budgets_mod
from .attention import attention_weights

# the reference columns of compare_table, beside the rules: the value-class width at the budget
# times dv (a worst case over unit-norm values), and a pivoted-QR subset refit on the evaluation
# queries (an oracle-like achievable reference)
L2_LOWER = "L2 lower (worst case)"
REFIT = "refit on eval queries"
REFERENCES = (L2_LOWER, REFIT)


def report_rows(n: int, p: int, d: int, dv: int, seed: int, budgets: list[float],
                 oracle_n: int = 10):
    """One row per synthetic family (``minimaxkv report``): epsilon-rank and effective dimension
    of the response covariance, the value-class lower and upper bounds at each budget, and the
    brute-force oracle on a small instance of ``oracle_n`` atoms."""
    key = jax.random.PRNGKey(seed)
    for family in tqdm(sorted(synthetic.FAMILIES), desc="families", file=sys.stderr):
        kw = dict(n=n, d=d, dv=dv, p=p, dtype=jnp.float64)
        if family == "lookup":
            kw["d"] = max(d, n)  # orthonormal keys: the exact, incompressible lookup cache
        inst = synthetic.make(family, key, **kw)
        q, c = inst.queries, inst.cache
        spec = compressibility.spectrum(q, c)
        row = {
            "family": family,
            "eps_rank": compressibility.eps_rank(spec, 0.05),
            "d_eff": float(compressibility.effective_dimension(spec, 1e-3 * float(spec[0]))),
        }
        for frac in budgets:
            m = budgets_mod.atoms(frac, n)
            lo = float(bounds.width_lower(q, c, m))
            hi, _ = bounds.width_upper(q, c, m)
            row[f"lower@{frac:g}"] = lo
            row[f"upper@{frac:g}"] = hi
            # the ratio is noise once both are at round-off level
            row[f"upper/lower@{frac:g}"] = hi / lo if lo > 1e-10 else float("nan")
        if oracle_n:
            small = synthetic.make(family, key, **{**kw, "n": oracle_n, "p": 8,
                                                   "d": max(d, oracle_n) if family == "lookup"
                                                   else d})
            m = max(1, oracle_n // 3)
            orc = bounds.oracle(small.queries, small.cache, m)
            row[f"oracle({oracle_n}->{m})"] = float(orc.risk)
            row[f"evict({oracle_n}->{m})"] = float(orc.eviction_risk)
        yield row


def compare_table(family: str, n: int, d: int, dv: int, p_obs: int, p_eval: int,
                  budgets, rule_names, seed: int = 0):
    """Risk on held-out queries of every rule at every budget, with reference columns.

    Returns ``{budget: {column: value}}``: a column per rule of ``rule_names`` and the
    :data:`REFERENCES`. Every summary has ``budget`` atoms with keys, values and
    log-weights, so equal budgets are equal bytes (GVote may use fewer). The instance and the
    rules' random draws both come from ``PRNGKey(seed)``.
    """
    from . import fit as fitmod
    from . import programs, rules
    from .risk import risk

    kw = dict(n=n, d=max(d, n) if family == "lookup" else d, dv=dv, p=p_obs + p_eval,
              dtype=jnp.float64)
    inst = synthetic.make(family, jax.random.PRNGKey(seed), **kw)
    c = inst.cache
    queries = inst.queries
    if family == "lookup":  # observed and held-out queries from one law: uniform over the atoms
        kw["p"] = n
        queries = synthetic.make(family, jax.random.PRNGKey(seed), **kw).queries
        queries = queries[jax.random.randint(jax.random.PRNGKey(seed + 1), (p_obs + p_eval,), 0, n)]
    q_obs, q_eval = queries[:p_obs], queries[p_obs:]
    table = {}
    for frac in budgets:
        m = budgets_mod.atoms(frac, n)
        row = {}
        for name in rule_names:
            rule = rules.get(name, theta=inst.theta, convention=inst.convention)
            summ = rule(c, m, q_obs, jax.random.PRNGKey(seed))
            row[name] = float(risk(q_eval, c, summ))
        row[L2_LOWER] = float(bounds.width_lower(q_eval, c, m)) * dv
        piv = scipy.linalg.qr(np.asarray(attention_weights(q_eval, c)), pivoting=True,
                              mode="economic")[2]
        ref = fitmod.refit(q_eval, c, jnp.asarray(np.sort(piv[:m])))
        row[REFIT] = float(risk(q_eval, c, ref))
        table[m] = row
        programs.relieve()  # every rule compiles per budget: bound what stays mapped
    return table
