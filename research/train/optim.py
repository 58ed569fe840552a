"""AdamW with warmup + cosine/linear decay, global-norm clipping, no decay on norms and biases."""

import jax
import optax

from research.config import SCHEDULES, OptimizerConfig
from research.models import stack


def learning_rate_schedule(*, peak: float, warmup_steps: int, total_steps: int, kind: str):
    """Linear warmup 0 -> `peak` over `warmup_steps`, then `kind` decay to 0 at `total_steps`.
    Step s (1-based) trains at schedule(s - 1): the first step's rate is 0 when warming up.
    With warmup_steps >= total_steps (the smoke presets: a few steps, a long warmup) the rate
    only rises, to peak x (total_steps - 1) / warmup_steps, and never decays."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps)
    elif kind == "linear":
        decay = optax.linear_schedule(peak, 0.0, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params):
    """Weight decay on matrices only: norms' scales and all biases are 1-D and are not decayed.
    Stacked layers (`ModelConfig.scan_layers`: a stack's entry is not a layer number) count
    without their leading layers dim."""

    def is_matrix(path, p):
        keys = [getattr(k, "key", None) for k in path]
        at = max((i for i, k in enumerate(keys[:-1]) if k in stack.STACKS), default=None)
        stacked = at is not None and not isinstance(keys[at + 1], int)
        return p.ndim - stacked >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg: OptimizerConfig, num_train_steps: int) -> optax.GradientTransformation:
    """AdamW as `cfg` describes (research.config.OptimizerConfig), decaying to 0 at
    `num_train_steps`."""
    schedule = learning_rate_schedule(
        peak=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        total_steps=num_train_steps,
        kind=cfg.schedule,
    )
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(
        optax.adamw(
            schedule,
            b1=cfg.adam_b1,
            b2=cfg.adam_b2,
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts)
