"""Feature maps phi for kernelised (linear) attention: sim(q, k) = phi(q) . phi(k) >= 0.

Every map takes `x: [..., head_dim]` and returns `[..., feature_dim]` in float32, so the sums in
linear attention accumulate in fp32 whatever the input dtype.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.ops.checks import check_positive_int

FeatureMap = Callable[[jax.Array], jax.Array]

# Names accepted by `linear_attention(feature_map=...)` on their own. "softmax" is special: it
# is not a per-token map (keys are normalised over positions), see `research.ops.attention.linear`.
FEATURE_MAP_NAMES = ("elu", "relu", "taylor", "softmax")
# FAVOR+ by name: the ops also need its random matrix, `favor_projection=favor_projection(key, m,
# head_dim)` (`research.models.ModelConfig(feature_map="favor")` builds that matrix itself).
FAVOR = "favor"
FAVOR_NEEDS_PROJECTION = (
    "feature_map='favor' needs favor_projection=ops.favor_projection(key, num_features, head_dim)"
)
ALLOWED = (
    f"{', '.join(FEATURE_MAP_NAMES)}, favor (with favor_projection=...) "
    "or a callable [..., head_dim] -> [..., features]"
)


def elu_feature_map(x: jax.Array) -> jax.Array:
    """phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs").

    Shapes: [..., d] -> [..., d]. Strictly positive, so denominators never vanish.
    Written as x + 1 for x > 0 and exp(x) otherwise: the same function as elu(x) + 1, but
    exp vectorises on CPU where expm1 does not (2x faster here).
    """
    x = x.astype(jnp.float32)
    pos = x > 0
    return jnp.where(pos, x + 1.0, jnp.exp(jnp.where(pos, 0.0, x)))


def relu_feature_map(x: jax.Array) -> jax.Array:
    """phi(x) = max(x, 0). Shapes: [..., d] -> [..., d]. Can be all zero for a token."""
    return jax.nn.relu(x.astype(jnp.float32))


def taylor_feature_map(x: jax.Array) -> jax.Array:
    """phi(x) = [1, x/|x|], so phi(q).phi(k) = 1 + q^.k^ >= 0 (Su 2020, first-order Taylor of exp).

    Shapes: [..., d] -> [..., d + 1]. A zero vector maps to [1, 0, ..., 0].
    """
    x = x.astype(jnp.float32)
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    # where-guarded rsqrt keeps both the value and the gradient finite at x = 0.
    inv = jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    return jnp.concatenate([jnp.ones_like(sq), x * inv], axis=-1)


def favor_projection(key: jax.Array, num_features: int, head_dim: int) -> jax.Array:
    """Positive orthogonal random features matrix W for FAVOR+ (Choromanski et al. 2021).

    Rows come in blocks of `head_dim` mutually orthogonal directions (QR of a Gaussian matrix),
    each row rescaled to the norm of an independent Gaussian vector so that the rows are
    marginally N(0, I) ("regular" scaling in the Performer code).

    Returns: [num_features, head_dim] float32.
    """
    check_positive_int("num_features", num_features)
    check_positive_int("head_dim", head_dim)
    num_blocks = -(-num_features // head_dim)
    block_key, norm_key = jax.random.split(key)
    gauss = jax.random.normal(block_key, (num_blocks, head_dim, head_dim), jnp.float32)
    qmat, rmat = jnp.linalg.qr(gauss)
    # Fixing the signs by diag(R) makes Q Haar-distributed; plain QR output is biased.
    qmat = qmat * jnp.sign(jnp.diagonal(rmat, axis1=-2, axis2=-1))[:, None, :]
    rows = jnp.swapaxes(qmat, -1, -2).reshape(num_blocks * head_dim, head_dim)[:num_features]
    norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_features, head_dim)), axis=-1)
    return rows * norms[:, None]


def favor(projection: jax.Array) -> FeatureMap:
    """FAVOR+ positive random features: phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x d^-1/4.

    E[phi(q).phi(k)] = exp(q.k / sqrt(d)), the softmax kernel (Choromanski et al. 2021,
    "Rethinking Attention with Performers"). `projection`: [m, d] from `favor_projection`.
    Features are computed in fp32, without the Performer code's stabiliser (a shared max
    subtracted from the exponents, which a state carried across calls would have to keep): the
    exponent w_r.x' - |x'|^2 / 2 is at most |w_r|^2 / 2, which exceeds fp32's 88.7 for some rows
    at m = 256, d = 128 (overflow at |x'| = |w_r|), and a token with a large norm (|x| about 60 at
    d = 64) has every feature underflow to 0 (its attention output is then 0). Keep q and k
    normalised (LayerNorm'd inputs are far inside this range).

    Returns a feature map [..., d] -> [..., m].
    """
    projection = jnp.asarray(projection, jnp.float32)
    if projection.ndim != 2:
        raise ValueError(
            f"favor projection must be [num_features, head_dim], got {projection.shape}"
        )
    num_features, head_dim = projection.shape

    def phi(x: jax.Array) -> jax.Array:
        if x.shape[-1] != head_dim:
            raise ValueError(
                f"favor projection expects head_dim {head_dim}, got last dim {x.shape[-1]}"
            )
        x = x.astype(jnp.float32) * head_dim**-0.25
        proj = jnp.einsum("...d,md->...m", x, projection)
        sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
        return jnp.exp(proj - sq) / np.sqrt(num_features)

    phi.feature_dim = num_features  # lets `feature_dim` answer without tracing
    return phi


_BY_NAME: dict[str, FeatureMap] = {
    "elu": elu_feature_map,
    "relu": relu_feature_map,
    "taylor": taylor_feature_map,
}


def with_projection(feature_map: str | FeatureMap, favor_projection=None) -> str | FeatureMap:
    """`favor(favor_projection)` for feature_map="favor"; any other map is returned unchanged.

    Raises ValueError for "favor" without a projection, or a projection with any other map (it
    would be ignored).
    """
    if isinstance(feature_map, str) and feature_map == FAVOR:
        if favor_projection is None:
            raise ValueError(FAVOR_NEEDS_PROJECTION)
        return favor(favor_projection)
    if favor_projection is not None:
        raise ValueError(
            f"favor_projection is only used with feature_map='favor', got feature_map="
            f"{feature_map!r}"
        )
    return feature_map


def resolve(feature_map: str | FeatureMap, favor_projection=None) -> FeatureMap:
    """Returns the per-token map for a name or callable; raises ValueError for unknown names."""
    feature_map = with_projection(feature_map, favor_projection)
    if callable(feature_map):
        return feature_map
    if feature_map == "softmax":
        raise ValueError(
            'feature_map="softmax" (Efficient Attention) normalises keys over positions and has no '
            "per-token form; it is only available in non-causal linear_attention"
        )
    if feature_map not in _BY_NAME:
        raise ValueError(f"unknown feature_map {feature_map!r}; allowed: {ALLOWED}")
    return _BY_NAME[feature_map]


def feature_dim(feature_map: str | FeatureMap, head_dim: int, *, favor_projection=None) -> int:
    """Number of features phi produces for inputs of size `head_dim` (the recurrent state's F).

    For "favor" that is the projection's number of rows, so pass `favor_projection` with it.
    """
    if isinstance(feature_map, str) and feature_map == "softmax" and favor_projection is None:
        return head_dim
    phi = resolve(feature_map, favor_projection)
    if hasattr(phi, "feature_dim"):
        return int(phi.feature_dim)
    out = jax.eval_shape(phi, jax.ShapeDtypeStruct((1, head_dim), jnp.float32))
    return int(out.shape[-1])
