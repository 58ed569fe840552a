"""GELU and its two elementary approximations (Hendrycks & Gimpel 2016; docs/research_notes.md
section 2)."""

import jax
import jax.numpy as jnp
import numpy as np

GELU_APPROXIMATIONS = ("none", "tanh", "sigmoid")
TANH_COEFFICIENT = 0.044715  # the published b/a in the tanh form
SIGMOID_SCALE = 1.702  # the published lambda in the sigmoid form
# Python floats are weakly typed in JAX, so bf16 inputs stay bf16.
_INV_SQRT2 = float(1 / np.sqrt(2))
_SQRT_2_OVER_PI = float(np.sqrt(2 / np.pi))


def gelu(x: jax.Array, approximate: str = "none") -> jax.Array:
    """GELU(x) = x Phi(x), elementwise; any shape.

    approximate:
      "none":    x/2 (1 + erf(x / sqrt 2)), exact.
      "tanh":    x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), max |error| ~ 1.8e-4 x |x|.
      "sigmoid": x sigmoid(1.702 x), max |Phi error| ~ 9.5e-3.
    """
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(
            f"unknown GELU approximate={approximate!r}; allowed: {', '.join(GELU_APPROXIMATIONS)}"
        )
    if approximate == "none":
        return 0.5 * x * (1.0 + jax.lax.erf(x * _INV_SQRT2))
    if approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (x + TANH_COEFFICIENT * x**3)
        return 0.5 * x * (1.0 + jnp.tanh(inner))
    return x * jax.nn.sigmoid(SIGMOID_SCALE * x)


def _minimax(error_fn, grid: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float]:
    """argmin_c max_{x in grid} |error_fn(x, c)|; the objective is unimodal in c on `bounds`."""
    from scipy import optimize  # here, not at import: every CLI process imports this module

    def worst(c: float) -> float:
        return float(np.max(np.abs(error_fn(grid, c))))

    res = optimize.minimize_scalar(worst, bounds=bounds, method="bounded", options={"xatol": 1e-12})
    if not res.success:
        raise RuntimeError(f"minimax fit did not converge: {res.message}")
    return float(res.x), float(res.fun)


def fit_gelu_constants(num_points: int = 400_000) -> dict[str, float]:
    """Re-derives the constants of both GELU approximations by minimax fits.

    tanh form: erf(x/sqrt2) ~ tanh(a x + b x^3), a = sqrt(2/pi) fixed by the Taylor term,
      b = argmin_b max_{x in [0, 4)} |erf(x/sqrt2) - tanh(a x + b x^3)|; returns b/a (~0.0447149).
    sigmoid form: lambda = argmin max_{x >= 0} |Phi(x) - sigmoid(lambda x)| (~1.7017449); both
      errors are odd around x = 0, so x >= 0 suffices (x in [0, 10], Phi(10) = 1 in fp64).
    Returns tanh_coefficient, tanh_max_error (of the erf fit), sigmoid_scale, sigmoid_max_error.
    """
    from scipy import special

    a = np.sqrt(2 / np.pi)
    x4 = np.linspace(0.0, 4.0, num_points, endpoint=False)
    b, tanh_err = _minimax(
        lambda x, b: special.erf(x / np.sqrt(2)) - np.tanh(a * x + b * x**3), x4, (0.0, 0.1)
    )
    x10 = np.linspace(0.0, 10.0, num_points)
    lam, sig_err = _minimax(
        lambda x, lam: special.ndtr(x) - special.expit(lam * x), x10, (1.0, 2.5)
    )
    return {
        "tanh_coefficient": float(b / a),
        "tanh_max_error": tanh_err,
        "sigmoid_scale": lam,
        "sigmoid_max_error": sig_err,
    }
