"""Position encodings: sinusoidal tables and rotary embeddings."""

import jax
import jax.numpy as jnp


def sinusoidal_positions(length: int, dim: int, *, base: float = 10000.0) -> jax.Array:
    """[length, dim] table: PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(...).

    Vaswani et al. 2017, "Attention Is All You Need", section 3.5. `dim` must be even.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    pos = jnp.arange(length, dtype=jnp.float32)[:, None]
    inv = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    ang = pos * inv[None, :]
    return jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(length, dim)


def apply_rotary(x: jax.Array, positions: jax.Array, *, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021, RoFormer), rotate-half layout as in GPT-NeoX.

    x [B, L, H, D] (D even), positions [B, L] or [L] int. Pairs (x_i, x_{i+D/2}) are rotated by
    angle p * base^(-2i/D), so q_m . k_n depends only on m - n. Computed in fp32.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary embedding needs an even head_dim, got {d}")
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
        positions = positions[None, :]
    inv = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    ang = positions[..., None].astype(jnp.float32) * inv  # [B, L, D/2]
    cos, sin = jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
