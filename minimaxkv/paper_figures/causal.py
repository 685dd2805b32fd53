"""(e) Causal prefill + decoding: per-position error and memory of the state over time."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from minimaxkv.paper_figures import common


def _smooth(x, w):
    x = np.asarray(x, float)
    w = max(1, min(w, len(x)))
    c = np.cumsum(np.concatenate([[0.0], x]))
    out = np.empty_like(x)
    for t in range(len(x)):  # trailing window mean
        lo = max(0, t + 1 - w)
        out[t] = (c[t + 1] - c[lo]) / (t + 1 - lo)
    return out


def draw(record):
    res = record["result"]
    T, pre = res["T"], res["prefill"]
    t = np.arange(T)
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(8.5, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    cmap = plt.get_cmap("tab10")
    w = max(1, T // 64)
    lowest = np.inf
    same_bytes = len({tuple(r["nbytes"]) for r in res["rules"].values()}) == 1
    for i, (name, r) in enumerate(res["rules"].items()):
        style = dict(color="black", lw=2) if name == "minimax" else dict(color=cmap(i), lw=1.2)
        err = _smooth(r["errors"], w)
        ax0.plot(t, common.floor(err), **style,
                 label=f"{name}: prefill {r['prefill_risk']:.2g}, decode {r['decode_risk']:.2g}")
        lowest = min(lowest, err[err > 1e-10].min(initial=np.inf))
        if not same_bytes or i == 0:
            ax1.plot(t, np.asarray(r["nbytes"]) / 1024, **(style if not same_bytes else
                                                            dict(color="black", lw=1.5)),
                     label=name if not same_bytes else "compressed state (every rule)")
    ax1.plot(t, np.asarray(res["full_nbytes"]) / 1024, color="0.5", ls="--", lw=1.2,
             label="full cache (keys + values)")
    if np.isfinite(lowest):  # exact positions (before the first compression) fall off the axis
        ax0.set_ylim(bottom=lowest / 3)
    for ax in (ax0, ax1):
        ax.axvline(pre, color="0.4", ls=":", lw=1)
    ax0.text(pre, 1.0, " decoding →", transform=ax0.get_xaxis_transform(), va="top",
             fontsize=8, color="0.3")
    ax0.set_yscale("log")
    ax0.set_ylabel(f"squared output error\n(trailing mean over {w} positions)")
    ax0.legend(title="rule: mean risk over prefill, decode", loc="lower right", ncol=2)
    ax1.set_ylabel("state memory (KiB)")
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("token position t (prefill, then decoding)")
    ax1.legend(loc="upper left", ncol=4 if not same_bytes else 2)
    fig.suptitle(f"Causal compression of a {pre}+{T - pre}-token stream — "
                 f"{common.subtitle(record)}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("causal"))
