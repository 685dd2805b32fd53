"""The shape annotations are checked at run time in the test session, and only there."""

import subprocess
import sys

import jaxtyping
import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import attention


def test_annotations_are_checked_in_the_test_session():
    cache = mkv.Cache(np.ones((5, 4)), np.ones((5, 3)))
    attention.attend_and_mass(np.ones((2, 4)), cache)  # p x d queries: accepted
    with pytest.raises(jaxtyping.TypeCheckError, match="queries"):
        attention.attend_and_mass(np.ones(4), cache)  # rank 1: the annotation refuses it
    with pytest.raises(jaxtyping.TypeCheckError, match="query_pos"):  # p = 2 queries, 3 positions
        attention.attend_and_mass(np.ones((2, 4)), cache, query_pos=np.arange(3))


@pytest.mark.unchecked
def test_unchecked_tests_see_the_library_error():
    cache = mkv.Cache(np.ones((5, 4)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="query_pos"):
        attention.attend_and_mass(np.ones((2, 4)), cache, query_pos=np.arange(3))


def test_the_library_runs_without_the_checks():
    """Outside the test session no import hook is installed: a call the annotations refuse
    reaches the library's own check."""
    code = ("import numpy as np, minimaxkv as mkv\n"
            "from minimaxkv import attention\n"
            "c = mkv.Cache(np.ones((5, 4)), np.ones((5, 3)))\n"
            "try:\n"
            "    attention.attend_and_mass(np.ones((2, 4)), c, query_pos=np.arange(3))\n"
            "except ValueError as e:\n"
            "    print('ValueError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ValueError"), out.stdout + out.stderr
