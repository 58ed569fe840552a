"""Exposure-bias remedies: strength 0 is teacher forcing; statistics; gradients vs references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import exposure_bias as eb

PAD = 0


def _targets(rng, b, length, vocab, src_len=3):
    """[B, L] inputs: src_len source tokens (mask 0), then distinct target tokens, then pads."""
    inputs = np.zeros((b, length), np.int32)
    mask = np.zeros((b, length), np.float32)
    for i in range(b):
        n = rng.integers(2, length - src_len + 1)
        inputs[i, :src_len] = rng.integers(1, vocab, src_len)
        inputs[i, src_len : src_len + n] = rng.choice(np.arange(1, vocab), n, replace=False)
        mask[i, src_len : src_len + n] = 1
    return inputs, mask


def test_random_replacement_statistics_pool_and_padding():
    inputs, mask = _targets(np.random.default_rng(0), 4000, 20, 100)
    out = np.asarray(eb.random_replacement(jax.random.PRNGKey(1), inputs, mask))
    changed = out != inputs
    assert not changed[mask == 0].any()  # source tokens and padding never replaced
    assert (out[inputs == PAD] == PAD).all() and not (out[mask == 1] == PAD).any()  # nor drawn
    for i in range(len(out)):  # every replacement comes from this sample's own targets
        assert set(out[i][mask[i] == 1]) <= set(inputs[i][mask[i] == 1])
    n = mask.sum(1, keepdims=True)
    # A replaced token equals the original with chance 1/n (targets are distinct).
    expected_tokens = np.sum(0.5 * 0.3 * (1 - 1 / n) * mask) / mask.sum()
    assert changed[mask == 1].mean() == pytest.approx(expected_tokens, abs=0.01)
    expected_samples = np.mean(0.5 * (1 - (1 - 0.3 * (1 - 1 / n)) ** n))
    assert changed.any(1).mean() == pytest.approx(expected_samples, abs=0.025)


def test_random_replacement_vocab_pool_is_uniform_without_pad():
    inputs, mask = _targets(np.random.default_rng(1), 3000, 16, 50)
    kw = dict(sample_prob=1.0, token_prob=1.0, pool="vocab", vocab_size=10)
    out = np.asarray(eb.random_replacement(jax.random.PRNGKey(2), inputs, mask, **kw))
    drawn = out[mask == 1]
    counts = np.bincount(drawn, minlength=10)
    assert counts[PAD] == 0
    np.testing.assert_allclose(counts[1:] / counts[1:].sum(), 1 / 9, rtol=0.1)


def test_strength_zero_is_teacher_forcing():
    inputs, mask = _targets(np.random.default_rng(2), 64, 12, 30)
    key = jax.random.PRNGKey(0)
    for kw in (dict(sample_prob=0.0), dict(token_prob=0.0)):
        np.testing.assert_array_equal(eb.random_replacement(key, inputs, mask, **kw), inputs)
    logits = jax.random.normal(key, (*inputs.shape, 30))
    np.testing.assert_array_equal(eb.mix_predictions(key, inputs, logits, mask, 1.0), inputs)

    params, batch, delta_shape = _toy_problem()
    base = lambda m, b: _toy_loss(m, b, jnp.zeros(delta_shape))  # noqa: E731
    for wrap in (eb.gradient_penalty, eb.fgm):
        wrapped = wrap(_toy_loss, epsilon=0.0, delta_shape=delta_shape)
        np.testing.assert_array_equal(wrapped(params, batch)[0], base(params, batch)[0])
        g0 = jax.grad(lambda p: base(p, batch)[0])(params)
        g1 = jax.grad(lambda p, w=wrapped: w(p, batch)[0])(params)
        jax.tree.map(np.testing.assert_array_equal, g0, g1)


def test_mix_predictions_uses_the_previous_positions_prediction():
    inputs, mask = _targets(np.random.default_rng(3), 8, 10, 20)
    logits = jax.random.normal(jax.random.PRNGKey(4), (*inputs.shape, 20))
    out = np.asarray(eb.mix_predictions(jax.random.PRNGKey(5), inputs, logits, mask, 0.0))
    pred = np.argmax(np.asarray(logits), -1)
    expected = inputs.copy()
    for b in range(8):
        for t in range(1, 10):
            if mask[b, t]:
                expected[b, t] = pred[b, t - 1]
    np.testing.assert_array_equal(out, expected)


def test_teacher_forcing_schedules():
    steps = np.array([0, 10, 1000, 5000])
    np.testing.assert_allclose(
        eb.teacher_forcing_prob(steps, "inverse_sigmoid", k=500),
        500 / (500 + np.exp(steps / 500)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        eb.teacher_forcing_prob(steps, "exponential", k=0.999), 0.999**steps, rtol=1e-4
    )
    np.testing.assert_allclose(
        eb.teacher_forcing_prob(steps, "linear", slope=1e-4, floor=0.6),
        np.maximum(0.6, 1 - 1e-4 * steps),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="schedule='cosine'"):
        eb.teacher_forcing_prob(steps, "cosine")


# A toy seq2seq-like loss: logits = (E + delta)[x] @ W, summed CE over weighted positions.
def _toy_problem(v=6, d=4, b=3, t=5):
    rng = np.random.default_rng(7)
    params = {"E": jnp.asarray(rng.normal(size=(v, d))), "W": jnp.asarray(rng.normal(size=(d, v)))}
    batch = {
        "x": rng.integers(0, v, (b, t)),
        "y": rng.integers(0, v, (b, t)),
        "w": (rng.random((b, t)) > 0.2).astype(np.float64),
    }
    return params, batch, (v, d)


def _toy_loss(params, batch, delta):
    logits = (params["E"] + delta)[batch["x"]] @ params["W"]
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, batch["y"][..., None], -1)[..., 0]
    return jnp.sum(nll * batch["w"]), jnp.sum(batch["w"]), {}


def test_gradient_penalty_matches_finite_differences():
    jax.config.update("jax_enable_x64", True)
    try:
        params, batch, shape = _toy_problem()
        w = batch["w"].sum()

        def mean_ce(e):
            return float(_toy_loss({**params, "E": e}, batch, np.zeros(shape))[0]) / w

        h, e0 = 1e-5, np.asarray(params["E"])
        g = np.zeros(shape)
        for idx in np.ndindex(*shape):
            ep, em = e0.copy(), e0.copy()
            ep[idx] += h
            em[idx] -= h
            g[idx] = (mean_ce(ep) - mean_ce(em)) / (2 * h)
        wrapped = eb.gradient_penalty(
            _toy_loss, epsilon=0.5, delta_shape=shape, delta_dtype=jnp.float64
        )
        s, weight, metrics = wrapped(params, batch)
        np.testing.assert_allclose(
            float(metrics["mean/penalty"]) / float(weight), 0.5 * np.sum(g**2), rtol=1e-6
        )
        # The trained gradient is second order; check it against differences of the loss.
        grad_w = jax.grad(lambda p: wrapped(p, batch)[0] / w)(params)["W"]
        wf = np.asarray(params["W"])
        for idx in [(0, 0), (1, 3), (3, 5)]:
            wp, wm = wf.copy(), wf.copy()
            wp[idx] += h
            wm[idx] -= h
            lp = float(wrapped({**params, "W": wp}, batch)[0]) / w
            lm = float(wrapped({**params, "W": wm}, batch)[0]) / w
            np.testing.assert_allclose(float(grad_w[idx]), (lp - lm) / (2 * h), rtol=1e-5)
    finally:
        jax.config.update("jax_enable_x64", False)


def _context_loss(params, batch, emb):
    """A toy loss on explicit input embeddings emb [B, L, D]: every position also sees its row's
    mean, so occurrences of one token get different gradients."""
    h = jnp.tanh(emb + jnp.mean(emb, axis=1, keepdims=True))
    logp = jax.nn.log_softmax(h @ params["W"], -1)
    nll = -jnp.take_along_axis(logp, batch["y"][..., None], -1)[..., 0]
    return jnp.sum(nll * batch["w"]), jnp.sum(batch["w"]), {}


def _penalty(loss_fn, params, batch, delta_shape):
    wrapped = eb.gradient_penalty(loss_fn, epsilon=0.5, delta_shape=delta_shape)
    _, weight, metrics = wrapped(params, batch)
    return float(metrics["mean/penalty"]) / float(weight)


def _both_forms(params, batch):
    """(per-position penalty, table penalty, explicit per-occurrence gradients [B, L, D])."""
    v, d = params["E"].shape
    per_position = lambda p, b, delta: _context_loss(p, b, p["E"][b["x"]] + delta)  # noqa: E731
    table = lambda p, b, delta: _context_loss(p, b, (p["E"] + delta)[b["x"]])  # noqa: E731
    emb = params["E"][batch["x"]]
    g = jax.grad(lambda e: _context_loss(params, batch, e)[0] / batch["w"].sum())(emb)
    got_position = _penalty(per_position, params, batch, lambda b: (*b["x"].shape, d))
    return got_position, _penalty(table, params, batch, (v, d)), np.asarray(g)


def test_per_position_penalty_is_the_per_occurrence_gradient():
    params, batch, (v, d) = _toy_problem()
    assert len(np.unique(batch["x"])) < batch["x"].size  # repeated tokens
    position, table, g = _both_forms(params, batch)
    # The note: the squared gradient w.r.t. each occurrence's embedding, summed over positions.
    np.testing.assert_allclose(position, 0.5 * np.sum(g**2), rtol=1e-5)
    # The table form squares the per-token sums of those gradients: a different penalty.
    summed = np.zeros((v, d))
    np.add.at(summed, batch["x"], g)
    np.testing.assert_allclose(table, 0.5 * np.sum(summed**2), rtol=1e-5)
    assert abs(table - position) > 0.1 * position
    # With every token occurring once the two forms agree.
    distinct = {
        **batch,
        "x": np.arange(6).reshape(2, 3),
        "y": batch["y"][:2, :3],
        "w": np.ones((2, 3)),
    }
    position, table, _ = _both_forms(params, distinct)
    np.testing.assert_allclose(position, table, rtol=1e-5)


def test_fgm_adds_the_loss_at_the_normalised_gradient_step():
    params, batch, shape = _toy_problem()
    g = jax.grad(lambda d: _toy_loss(params, batch, d)[0] / batch["w"].sum())(jnp.zeros(shape))
    r = 0.5 * g / jnp.linalg.norm(g)
    expected = _toy_loss(params, batch, jnp.zeros(shape))[0] + _toy_loss(params, batch, r)[0]
    got = eb.fgm(_toy_loss, epsilon=0.5, delta_shape=shape)(params, batch)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Its gradient holds r fixed (no gradient through r): that of CE(E) + CE(E + r) with r a
    # constant computed above.
    wrapped = eb.fgm(_toy_loss, epsilon=0.5, delta_shape=shape)
    got_g = jax.grad(lambda p: wrapped(p, batch)[0])(params)
    r_fixed = jnp.asarray(np.asarray(r))
    want_g = jax.grad(
        lambda p: _toy_loss(p, batch, jnp.zeros(shape))[0] + _toy_loss(p, batch, r_fixed)[0]
    )(params)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scst_raises_better_than_baseline_samples_and_lowers_worse_ones():
    # Per-example policies theta [B, T, V]; sample 0 beats its baseline, sample 1 does not.
    theta = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5))
    tokens = jnp.array([[1, 2, 3, 4], [0, 0, 1, 2]])
    mask = jnp.ones((2, 4))
    reward, baseline = jnp.array([0.9, 0.1]), jnp.array([0.5, 0.5])

    def loss(th):
        return jnp.sum(eb.scst_loss(eb.sequence_log_prob(th, tokens, mask), reward, baseline))

    before = eb.sequence_log_prob(theta, tokens, mask)
    after = eb.sequence_log_prob(theta - 0.1 * jax.grad(loss)(theta), tokens, mask)
    assert after[0] > before[0] and after[1] < before[1]
    zero = jax.grad(
        lambda th: jnp.sum(eb.scst_loss(eb.sequence_log_prob(th, tokens, mask), baseline, baseline))
    )(theta)
    assert not np.any(np.asarray(zero))  # no advantage, no update


def test_mrt_risk_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    logp = rng.normal(-8, 3, (3, 5))
    r = rng.random((3, 5))
    alpha = 0.3
    q = np.exp(alpha * logp - (alpha * logp).max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    delta = 1 - r
    risk = np.sum(q * delta, 1)
    grad = alpha * q * (delta - np.sum(q * delta, 1, keepdims=True))
    np.testing.assert_allclose(
        eb.mrt_risk(jnp.asarray(logp), jnp.asarray(r), alpha=alpha), risk, rtol=1e-5
    )
    got = jax.grad(lambda lp: jnp.sum(eb.mrt_risk(lp, jnp.asarray(r), alpha=alpha)))(
        jnp.asarray(logp, jnp.float32)
    )
    np.testing.assert_allclose(got, grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(sample_prob=1.5), "sample_prob=1.5"),
        (dict(pool="batch"), "pool='batch'"),
        (dict(pool="vocab"), "vocab_size >= 2"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        eb.random_replacement(
            jax.random.PRNGKey(0), np.ones((2, 3), np.int32), np.ones((2, 3)), **kw
        )
