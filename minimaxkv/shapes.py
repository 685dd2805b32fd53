"""The array type of the shape annotations: every public function takes a JAX or a NumPy array.

``Float[Arr, "p d"]`` reads "floating point, p x d"; jaxtyping names the axes, so two arguments
annotated with the same name must agree. The annotations are checked at run time in the test
session only (pyproject.toml's pytest options install jaxtyping's import hook with beartype over
the package); the library itself never pays for them.
"""

from __future__ import annotations

from typing import Union

import numpy as np
from jax import Array
from jaxtyping import Bool, Float, Int, Shaped

Arr = Union[Array, np.ndarray]
# a real number given as a Python float or a 0-d array (an attention scale read from a model)
Scalar = Union[float, Shaped[Arr, ""]]

__all__ = ["Arr", "Bool", "Float", "Int", "Scalar", "Shaped"]
