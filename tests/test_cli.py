"""The command line: tables computed from the library, errors for bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_attention

from minimaxkv import cli, synthetic, tables


def test_compare_table_against_float64_numpy():
    """Every rule is exact at the full budget; the window rule's risk at 6 atoms (it keeps the
    last 6) and the L2 column (sigma_7 of the held-out attention matrix, squared, times dv) equal
    float64 NumPy computations on the same instance and held-out queries."""
    table = tables.compare_table("clustered", n=24, d=4, dv=2, p_obs=8, p_eval=8,
                                 budgets=[0.25, 1.0], rule_names=["window", "snapkv", "minimax"])
    assert sorted(table) == [6, 24]
    assert [table[24][r] for r in ("window", "snapkv", "minimax")] == [0.0] * 3
    inst = synthetic.make("clustered", jax.random.PRNGKey(0), n=24, d=4, dv=2, p=16,
                          dtype=jnp.float64)
    q = np.asarray(inst.queries)[8:]
    k, v, b = (np.asarray(x) for x in inst.cache)
    full, _, att = np_attention(q, k, v, b)
    last, _, _ = np_attention(q, k[-6:], v[-6:], b[-6:])
    assert table[6]["window"] == pytest.approx(np.mean(np.sum((full - last) ** 2, 1)), rel=1e-9)
    assert table[6]["snapkv"] > 0 and table[6]["minimax"] > 0
    sigma = np.linalg.svd(att / np.sqrt(len(q)), compute_uv=False)
    assert table[6][tables.L2_LOWER] == pytest.approx(sigma[6] ** 2 * 2, rel=1e-6)


def _printed_rows(out: str, first: str) -> dict:
    """The table rows of a command's output, by their first cell, from the header starting with
    ``first``: {name: {column: cell}}."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first])
    cols = lines[start].split()
    return {line.split()[0]: dict(zip(cols, line.split())) for line in lines[start + 1:]
            if len(line.split()) >= len(cols)}


def test_report_prints_the_lookup_familys_bounds_as_float64_numpy(capsys):
    """`report`'s lookup row: the epsilon-rank of G and the L2 width at m = 4 (sigma_5 of
    W^1/2 P, squared), recomputed with float64 NumPy from the same instance."""
    assert cli.main(["report", "--n", "16", "--p", "8", "--d", "4", "--dv", "2",
                     "--budgets", "0.25", "--oracle-n", "8"]) == 0
    row = _printed_rows(capsys.readouterr().out, "family")["lookup"]
    inst = synthetic.make("lookup", jax.random.PRNGKey(0), n=16, d=16, dv=2, p=8,
                          dtype=jnp.float64)
    q, (k, v, b) = np.asarray(inst.queries), (np.asarray(x) for x in inst.cache)
    _, _, att = np_attention(q, k, v, b)
    sigma = np.linalg.svd(att / np.sqrt(len(q)), compute_uv=False)
    assert float(row["lower@0.25"]) == pytest.approx(sigma[4] ** 2, rel=5e-3)  # 3 digits
    g = (att.T @ att / len(q)) * (1 + v @ v.T)
    eigs = np.sort(np.linalg.eigvalsh(g))[::-1]
    tails = np.append(np.cumsum(eigs[::-1])[::-1], 0.0)
    assert int(row["eps_rank"]) == int(np.argmax(tails <= 0.05 * eigs.sum()))


def test_compare_prints_the_library_table(capsys):
    """`compare` prints compare_table's cells (4 digits) under the right rule and budget."""
    argv = ["--n", "16", "--p", "6", "--d", "4", "--dv", "2", "--budgets", "0.25", "0.5"]
    assert cli.main(["compare", "--families", "power_law", *argv,
                     "--rules", "window", "minimax"]) == 0
    rows = _printed_rows(capsys.readouterr().out, "rule")
    table = tables.compare_table("power_law", 16, 4, 2, 6, 6, [0.25, 0.5], ["window", "minimax"])
    for name in ("window", "minimax"):
        printed = [float(rows[name][f"m={m}"]) for m in table]
        assert printed == pytest.approx([table[m][name] for m in table], rel=1e-3)


def test_bad_arguments():
    with pytest.raises(SystemExit):
        cli.main(["report", "--n", "0"])
    with pytest.raises(SystemExit):
        cli.main(["report", "--budgets", "1.5"])
    with pytest.raises(SystemExit):
        cli.main(["report", "--oracle-n", "20"])
    with pytest.raises(SystemExit):
        cli.main(["compare", "--families", "nope"])


def test_causal_command(capsys):
    assert cli.main(["causal", "--prefill", "64", "--decode", "32", "--budget", "16", "--block",
                     "16", "--d", "8", "--dv", "4", "--rules", "window", "minimax"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith(("window", "minimax"))}
    assert set(rows) == {"window", "minimax"}
    for cells in rows.values():  # memory never exceeds budget + block atoms of (d + dv + 1) floats
        assert int(cells[2]) <= (16 + 16) * (8 + 4 + 1) * 4


@pytest.mark.parametrize("argv", [
    ["causal", "--rules", "nosuch", "--prefill", "64", "--decode", "8"],
    ["causal", "--rules", "snapkv@adakv", "--prefill", "64", "--decode", "8"],
    ["causal", "--budget", "0", "--prefill", "64", "--decode", "8"],
    ["causal", "--block", "100", "--prefill", "64", "--decode", "32"],
    ["compare", "--n", "4"],
    ["compare", "--rules", "nosuch"],
    ["analyze", "missing.safetensors", "--rules", "nosuch"],
    ["compare", "--cache", "missing.safetensors", "--n", "64"],
    ["compare", "--observed", "8"],
    ["compare", "--families", "nope"],
    ["evaluate", "--budgets", "1.5"],
    ["evaluate", "--rules", "nosuch"],
    ["bench", "--tasks", "passkey"],
    ["bench", "--rules", "nosuch"],
    ["bench", "--prompts", "0"],
    ["frobnicate"],
])
def test_user_errors_are_one_line_without_traceback(argv, capsys):
    """A bad argument is one line on stderr (exit 2) naming the command and pointing to
    --help, before any work."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minimaxkv") and "error:" in err[0], err
    assert err[0].endswith("--help)") and err[0].count("available:") <= 1


def test_library_input_errors_are_one_line(capsys, tmp_path):
    """A ValueError from the library's input checks, raised while the command runs, is one
    line on stderr with exit status 2 (MINIMAXKV_TRACEBACK=1 shows the traceback)."""
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert cli.main(["analyze", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minimaxkv analyze: error:")
