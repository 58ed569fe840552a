"""research.ops.checks: the shared positive-int, bool and causal-allowed rules."""

import re

import numpy as np
import pytest

from research.ops.checks import check_bool, check_causal_allowed, check_positive_int


@pytest.mark.parametrize("bad", [True, False, 0, -1, 1.5, "3", None])
def test_check_positive_int_rejects(bad):
    with pytest.raises(ValueError, match=f"size must be a positive int, got {bad!r}"):
        check_positive_int("size", bad)


@pytest.mark.parametrize("good", [1, 3, np.int64(3), np.int32(7)])
def test_check_positive_int_accepts(good):
    check_positive_int("size", good)


def test_check_causal_allowed():
    with pytest.raises(ValueError, match="attention='linformer' cannot be causal: E and F mix"):
        check_causal_allowed(attention="linformer")
    with pytest.raises(
        ValueError,
        match=r"feature_map='softmax' \(Efficient Attention\) cannot be "
        "causal.*use elu, relu, taylor or favor",
    ):
        check_causal_allowed(feature_map="softmax")
    for feature_map in (None, "elu", "relu", "taylor", "favor", lambda x: x):
        check_causal_allowed(feature_map=feature_map)
    check_causal_allowed(attention="softmax", feature_map="softmax")  # the map is unused there


@pytest.mark.parametrize("bad", ["yes", "False", 1, 0, None, 1.0, np.array(True)])
def test_check_bool_rejects(bad):
    with pytest.raises(ValueError, match=f"^flag must be a bool, got {re.escape(repr(bad))}$"):
        check_bool("flag", bad)


@pytest.mark.parametrize("good", [True, False, np.True_, np.bool_(False)])
def test_check_bool_accepts(good):
    check_bool("flag", good)
