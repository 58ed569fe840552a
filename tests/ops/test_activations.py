import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from research.ops import activations

X = np.linspace(-8, 8, 4001)


def test_exact_gelu_matches_scipy_erf():
    want = X * special.ndtr(X)
    got = activations.gelu(jnp.asarray(X, jnp.float32))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_tanh_and_sigmoid_forms_match_their_formulas_and_stay_close_to_exact():
    x32 = jnp.asarray(X, jnp.float32)
    tanh_ref = 0.5 * X * (1 + np.tanh(np.sqrt(2 / np.pi) * (X + 0.044715 * X**3)))
    sig_ref = X * special.expit(1.702 * X)
    np.testing.assert_allclose(activations.gelu(x32, "tanh"), tanh_ref, atol=2e-6)
    np.testing.assert_allclose(activations.gelu(x32, "sigmoid"), sig_ref, atol=2e-6)
    exact = X * special.ndtr(X)
    # Published max deviations (Hendrycks & Gimpel 2016): tanh form ~1e-3, sigmoid form ~2e-2.
    assert np.max(np.abs(tanh_ref - exact)) < 1e-3
    assert np.max(np.abs(sig_ref - exact)) < 3e-2


def test_gelu_gradient_and_bf16():
    g = jax.grad(lambda x: activations.gelu(x))(1.3)
    want = special.ndtr(1.3) + 1.3 * np.exp(-(1.3**2) / 2) / np.sqrt(2 * np.pi)
    assert abs(float(g) - want) < 1e-6
    for form in activations.GELU_APPROXIMATIONS:
        y = activations.gelu(jnp.ones(3, jnp.bfloat16), form)
        assert y.dtype == jnp.bfloat16


def test_fitted_constants_reproduce_the_published_ones():
    c = activations.fit_gelu_constants()
    assert abs(c["tanh_coefficient"] - 0.0447149) < 1e-4
    assert abs(c["sigmoid_scale"] - 1.7017) < 1e-4
    # docs/research_notes.md section 2: max errors about 3.6e-4 (tanh fit of erf) and 9.5e-3
    # (sigmoid fit).
    assert abs(c["tanh_max_error"] - 3.6e-4) < 0.1e-4
    assert abs(c["sigmoid_max_error"] - 9.5e-3) < 0.1e-3
    # A real optimum: perturbing the constants makes the worst-case error larger.
    x = np.linspace(0, 4, 100_000, endpoint=False)
    a = np.sqrt(2 / np.pi)

    def worst(coef):
        return np.max(np.abs(special.erf(x / np.sqrt(2)) - np.tanh(a * x + a * coef * x**3)))

    best = c["tanh_coefficient"]
    assert worst(best) < worst(best + 2e-5) and worst(best) < worst(best - 2e-5)
    assert worst(best) < worst(0.0455399)  # the pure Taylor match is worse


def test_unknown_approximation_is_rejected():
    with pytest.raises(ValueError, match=r"unknown GELU approximate='erf'; allowed: none, tanh"):
        activations.gelu(jnp.ones(2), "erf")
