"""Argument checks shared across the codebase, so each rule has one message.

They run on Python values (static shapes, config fields), so errors surface before anything is
traced or compiled.
"""

import pathlib

import numpy as np


def is_positive_int(value) -> bool:
    """True for an int >= 1 (numpy integers count; bool does not). The one rule; ops word their
    errors "name must be a positive int, got v", configs "key=v: must be a positive int"."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value) -> None:
    """Raises ValueError unless `is_positive_int(value)`."""
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_positive_field(key: str, value) -> None:
    """The same rule for a config field, worded as config errors are: "key=v: must be ..."."""
    if not is_positive_int(value):
        raise ValueError(f"{key}={value!r}: must be a positive int")


def check_bool(name: str, value) -> None:
    """Raises ValueError unless `value` is a real bool (numpy bools count; "yes", 1 and None do
    not: a truthy string would otherwise silently switch a behaviour on)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_causal_allowed(*, attention: str = "linear", feature_map=None) -> None:
    """Raises ValueError if this attention cannot be causal (call it only when causal is asked).

    attention="linformer": its E and F projections mix every position into each projected key.
    attention="linear" with feature_map="softmax" (Efficient Attention, Shen et al. 2021): keys
    are normalised over all positions. Every other combination may be causal.
    """
    if attention == "linformer":
        raise ValueError(
            "attention='linformer' cannot be causal: E and F mix all n positions into each of the "
            "m projected keys, so every output would see future tokens; use it only in "
            "bidirectional encoders"
        )
    if attention == "linear" and isinstance(feature_map, str) and feature_map == "softmax":
        raise ValueError(
            "feature_map='softmax' (Efficient Attention) cannot be causal: it normalises keys "
            "over all positions; use elu, relu, taylor or favor for causal attention (in "
            "research.ops, favor also needs favor_projection=ops.favor_projection(key, "
            "num_features, head_dim))"
        )


def file_in_the_way(path: str) -> pathlib.Path | None:
    """The file that keeps a local folder `path` (made if missing) from being one: `path`
    itself or the nearest existing folder above it, when that is not a directory; else None."""
    p = pathlib.Path(path).expanduser().absolute()
    existing = next((q for q in (p, *p.parents) if q.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None
