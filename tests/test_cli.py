"""The command line: tables computed from the library, errors for bad arguments."""

import pytest

from minimaxkv import cli


def test_compare_table_full_budget_is_exact():
    table = cli.compare_table("clustered", n=24, d=4, dv=2, p_obs=8, p_eval=8,
                              budgets=[0.25, 1.0], rule_names=["window", "snapkv", "minimax"])
    assert sorted(table) == [6, 24]
    for rule in ("window", "snapkv", "minimax"):
        assert table[24][rule] == 0.0
        assert table[6][rule] > 0.0
    assert table[6]["L2 lower (worst case)"] >= 0.0


def test_report_and_compare_run(capsys):
    assert cli.main(["report", "--n", "16", "--p", "8", "--d", "4", "--dv", "2",
                     "--budgets", "0.25", "--oracle-n", "8"]) == 0
    out = capsys.readouterr().out
    assert "lookup" in out and "eps_rank" in out
    assert cli.main(["compare", "--families", "power_law", "--n", "16", "--p", "6", "--d", "4",
                     "--dv", "2", "--budgets", "0.5", "--rules", "window", "minimax"]) == 0
    assert "minimax" in capsys.readouterr().out


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
