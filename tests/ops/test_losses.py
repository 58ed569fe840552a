import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp

from research.ops import losses


def _case(seed=0, shape=(3, 7), vocab=11):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((*shape, vocab))).astype(np.float32)
    labels = rng.integers(0, vocab, shape)
    mask = rng.random(shape) < 0.7
    return logits, labels, mask


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("z", [0.0, 1e-3])
def test_cross_entropy_matches_numpy(smoothing, z):
    logits, labels, mask = _case()
    lp = log_softmax(logits.astype(np.float64), -1)
    v = logits.shape[-1]
    target = np.eye(v)[labels] * (1 - smoothing) + smoothing / v
    per_tok = -(target * lp).sum(-1) + z * logsumexp(logits.astype(np.float64), -1) ** 2
    loss, weight = losses.cross_entropy(
        logits, labels, mask=mask, label_smoothing=smoothing, z_loss=z
    )
    np.testing.assert_allclose(loss, (per_tok * mask).sum(), rtol=1e-5)
    assert float(weight) == mask.sum()


def test_sums_stay_exact_across_shards():
    """Splitting a batch unevenly and adding (loss, weight) gives the unsplit mean exactly."""
    logits, labels, mask = _case(1, (4, 9))
    full = losses.cross_entropy(logits, labels, mask=mask)
    parts = [
        losses.cross_entropy(logits[s], labels[s], mask=mask[s]) for s in (slice(0, 1), slice(1, 4))
    ]
    total = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    np.testing.assert_allclose(total, full[0] / full[1], rtol=1e-6)
    mean_of_means = np.mean([p[0] / p[1] for p in parts])
    assert abs(mean_of_means - full[0] / full[1]) > 1e-3  # why the sums are returned


def test_bf16_logits_are_computed_in_fp32():
    logits, labels, _ = _case(2)
    big = jnp.asarray(logits * 50, jnp.bfloat16)  # logits in the hundreds
    loss, _ = losses.cross_entropy(big, labels)
    ref = -np.take_along_axis(
        log_softmax(np.asarray(big, np.float64), -1), labels[..., None], -1
    ).sum()
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    assert loss.dtype == jnp.float32


def test_mlm_loss_only_counts_masked_positions():
    logits, labels, mask = _case(3)
    loss, weight = losses.mlm_loss(logits, labels, mlm_mask=mask)
    lp = log_softmax(logits.astype(np.float64), -1)
    nll = -np.take_along_axis(lp, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, nll[mask].sum(), rtol=1e-5)
    assert float(weight) == mask.sum()


def test_mlm_corrupt_statistics():
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 100, (64, 512)))
    maskable = jnp.ones(tokens.shape, bool).at[:, :8].set(False)
    out, chosen = losses.mlm_corrupt(
        jax.random.PRNGKey(0), tokens, mask_id=1, vocab_size=100, maskable=maskable
    )
    out, chosen, tokens = np.asarray(out), np.asarray(chosen), np.asarray(tokens)
    assert not chosen[:, :8].any() and (out[:, :8] == tokens[:, :8]).all()
    assert (out[~chosen] == tokens[~chosen]).all()
    assert abs(chosen[:, 8:].mean() - 0.15) < 0.005
    n = chosen.sum()
    assert abs((out[chosen] == 1).sum() / n - 0.8) < 0.02
    changed = (out[chosen] != 1) & (out[chosen] != tokens[chosen])
    assert abs(changed.sum() / n - 0.1 * 99 / 100) < 0.02  # random token may equal the original


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\), got 1.0"),
        ({"z_loss": -1.0}, "z_loss must be >= 0"),
        ({"mask": np.ones((3, 6), bool)}, "mask shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    logits, labels, _ = _case()
    with pytest.raises(ValueError, match=match):
        losses.cross_entropy(logits, labels, **kwargs)
    with pytest.raises(ValueError, match="labels shape"):
        losses.cross_entropy(logits, labels[:, :3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16, np.bool_])
def test_non_integer_labels_are_refused(dtype):
    """Float labels used to be truncated to int silently (2.7 -> class 2)."""
    logits, labels, _ = _case()
    with pytest.raises(ValueError, match="labels must have an integer dtype"):
        losses.cross_entropy(logits, np.asarray(labels, dtype))
    with pytest.raises(ValueError, match="labels must have an integer dtype"):
        losses.mlm_loss(logits, np.asarray(labels, dtype), mlm_mask=np.ones(labels.shape, bool))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_integer_labels_of_any_width_are_accepted(dtype):
    logits, labels, _ = _case()
    want = losses.cross_entropy(logits, labels.astype(np.int32))
    got = losses.cross_entropy(logits, labels.astype(dtype))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_masked_position_adds_nothing_whatever_it_holds():
    """0 x NaN is NaN: a masked padding label outside the vocabulary (its gathered log-prob is
    NaN) or a -inf logit under label smoothing made the whole sum NaN or inf."""
    logits = jnp.zeros((2, 5)).at[1, 0].set(-jnp.inf)
    for labels, smoothing in (([1, 5], 0.0), ([1, 2], 0.1)):
        got, weight = losses.cross_entropy(
            logits, jnp.asarray(labels), mask=jnp.asarray([1, 0]), label_smoothing=smoothing
        )
        first = jnp.asarray(labels[:1])
        alone, _ = losses.cross_entropy(logits[:1], first, label_smoothing=smoothing)
        assert float(weight) == 1.0 and float(got) == pytest.approx(float(alone))
        g = jax.grad(
            lambda x, lab=labels, s=smoothing: losses.cross_entropy(
                x, jnp.asarray(lab), mask=jnp.asarray([1, 0]), label_smoothing=s
            )[0]
        )(logits)
        assert np.isfinite(np.asarray(g)).all()
