"""BERT-of-Theseus model: the p = 0 / p = 1 identities, the module composition, the Bernoulli
draws and schedule, the frozen predecessor under the sharded step on 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from research.models import Bert, ModelConfig
from research.models.theseus import (
    Theseus,
    check_successor_layers,
    replace_prob,
)
from research.models.variables import Frozen
from research.tasks.theseus import TheseusConfig, make_theseus_loss, replacement_draws
from research.train import optim, sharding, step

CFG = ModelConfig(
    vocab_size=60,
    d_model=16,
    num_heads=2,
    num_layers=4,
    d_ff=32,
    max_length=16,
    positions="rotary",
    norm="pre",
    pooler=True,
    num_labels=3,
)


def _model(k=2, seed=0):
    m = Theseus(CFG, successor_layers=k, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    m.eval()
    return m


def _tokens(b=3, length=12, seed=0):
    x = jax.random.randint(jax.random.key(seed), (b, length), 5, CFG.vocab_size)
    mask = jnp.arange(length)[None, :] < jnp.array([[12], [9], [5]])[:b]
    return x, mask


def test_no_replacement_is_the_predecessor_and_full_replacement_is_the_successor():
    m = _model()
    x, mask = _tokens()
    # r = 0: exactly the predecessor Bert, bit for bit.
    np.testing.assert_array_equal(
        m(x, mask=mask, replace=np.zeros(2, bool)).class_logits,
        m.predecessor(x, mask=mask).class_logits,
    )
    # r = 1 (the default): exactly the standalone k-layer successor Bert.
    successor = m.successor_model()
    successor.eval()
    assert isinstance(successor, Bert) and successor.cfg.num_layers == 2
    np.testing.assert_array_equal(
        m(x, mask=mask).class_logits, successor(x, mask=mask).class_logits
    )
    # The successor's weights are trainable Params again, the predecessor's are Frozen.
    assert len(nnx.to_flat_state(nnx.state(successor, Frozen))) == 0
    assert len(nnx.to_flat_state(nnx.state(m.predecessor, nnx.Param))) == 0


@pytest.mark.parametrize("replace", [(True, False), (False, True)])
def test_mixed_replacement_composes_the_modules(replace):
    """Module i is predecessor layers 2i, 2i+1 or successor layer i; head and embeddings are the
    predecessor's. The reference runs the layers one by one."""
    m = _model()
    x, mask = _tokens()
    p = m.predecessor
    h, attn_mask, positions = p.embed_inputs(x, None, mask)
    for i, r in enumerate(replace):
        layers = [m.successor[i]] if r else list(p.layers[2 * i : 2 * i + 2])
        for layer in layers:
            h = layer(h, mask=attn_mask, positions=positions)
    want = p.outputs(h).class_logits
    got = m(x, mask=mask, replace=np.array(replace)).class_logits
    np.testing.assert_array_equal(got, want)
    # Drawn inside jit, the same choice through nnx.cond gives the same logits.
    jitted = nnx.jit(lambda mdl, r: mdl(x, mask=mask, replace=r).class_logits)
    np.testing.assert_allclose(jitted(m, jnp.array(replace)), want, atol=1e-6)


def test_replacement_frequencies_and_schedule():
    """The task's draws over 4,000 steps: each module replaced with probability p,
    independently of the others, within 4 standard errors."""
    n = 4000
    steps = jnp.arange(n)
    for p in (0.5, 0.2):
        draws = replacement_draws(TheseusConfig(replace_prob=p), seed=3, num_train_steps=n)
        r = np.asarray(jax.vmap(lambda t, d=draws: d(t, 3))(steps))
        np.testing.assert_array_less(np.abs(r.mean(0) - p), 4 * np.sqrt(p * (1 - p) / n))
        both = (r[:, 0] & r[:, 1]).mean()
        assert abs(both - p * p) < 4 * np.sqrt(p * p * (1 - p * p) / n)
    # The paper's linear curriculum p_t = min(1, p_0 + theta t); slope 0 = reach 1 at the end.
    for t, want in ((0, 0.3), (10, 0.3 + 10 * 0.05), (100, 1.0)):
        assert float(replace_prob(t, p=0.3, schedule="linear", slope=0.05)) == pytest.approx(want)
    assert float(replace_prob(7, p=0.5, schedule="constant", slope=0.1)) == 0.5
    linear = TheseusConfig(replace_prob=0.0, replace_schedule="linear")
    r = np.asarray(
        jax.vmap(lambda t: replacement_draws(linear, seed=0, num_train_steps=n)(t, 3))(steps)
    )
    first, last = r[: n // 10].mean(), r[-n // 10 :].mean()
    assert abs(first - 0.05) < 0.03 and abs(last - 0.95) < 0.03  # p rises 0 -> 1 linearly
    assert r[-1].all()  # p = 1 at the last step


def test_successor_layers_must_divide_the_predecessor():
    for k in (3, 5, 0):
        want = rf"successor_layers={k}: must divide the predecessor's 4 layers \(allowed: \[1, 2"
        with pytest.raises(ValueError, match=want):
            check_successor_layers(4, k)
    with pytest.raises(ValueError, match="needs num_labels"):
        Theseus(CFG.replace(num_labels=0), successor_layers=2, rngs=nnx.Rngs(0))


# The task's loss: r drawn from the run's seed and the step (the same on every device).
LOSS = make_theseus_loss(TheseusConfig(successor_layers=2), seed=0, num_train_steps=4)


def _train(mesh_shape, kind="jit"):
    model = Theseus(CFG, successor_layers=2, rngs=nnx.Rngs(params=0, dropout=1))
    frozen_before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.predecessor, Frozen)))
    model_def, params, consts = step.split_model(model)
    initial = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    # Only the successor is trainable; the predecessor is in consts, replicated.
    assert set(nnx.to_pure_dict(params)) == {"successor"}
    assert set(nnx.to_pure_dict(consts)) == {"predecessor"}
    opt_cfg = ConfigDict(
        dict(
            learning_rate=3e-3,
            warmup_steps=1,
            num_train_steps=4,
            schedule="cosine",
            weight_decay=0.1,
            grad_clip=1.0,
            adam_b1=0.9,
            adam_b2=0.99,
            adam_eps=1e-8,
        )
    )
    opt = optim.make_optimizer(opt_cfg, 4)
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[: int(np.prod(list(mesh_shape.values())))])
    sh = step.state_shardings(opt, params, consts, mesh)
    if kind == "shard_map":  # replicated state, each device its rows, explicit psum
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
        rep = sharding.replicated(mesh)
        sh = jax.tree.map(
            lambda _: rep,
            step.state_shardings(opt, params, consts, mesh),
            is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
        )
        train = step.make_shard_map_step(model_def, opt, LOSS, mesh=mesh)
    else:
        train = step.make_train_step(model_def, opt, LOSS, mesh=mesh, shardings=sh)
    state = step.init_state(opt, params, consts, 0, sh)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(4):
        batch = {
            "inputs": rng.integers(5, 60, (16, 12)),
            "mask": np.ones((16, 12), bool),
            "labels": rng.integers(0, 3, (16,)),
        }
        state, metrics = train(state, batch)
        losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    # No optimizer moment exists for a predecessor weight.
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)
    ]
    assert paths and not any("predecessor" in p for p in paths)
    after = jax.tree.map(np.asarray, jax.device_get(state.consts["predecessor"]))
    jax.tree.map(np.testing.assert_array_equal, after, frozen_before)  # bitwise unchanged
    return jax.device_get(state.params), losses, initial


def test_training_moves_only_the_successor_and_8_devices_equal_1():
    params1, losses1, initial = _train({"data": 1})
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), params1, initial)
    assert all(jax.tree.leaves(moved))  # every successor tensor trained
    # 8 devices, sharded by rules or data-parallel with shard_map: the same draws, the same
    # losses and parameters as one device.
    for mesh, kind in (({"data": 4, "fsdp": 2}, "jit"), ({"data": 8}, "shard_map")):
        params8, losses8, _ = _train(mesh, kind)
        np.testing.assert_allclose(losses8, losses1, rtol=1e-5, err_msg=kind)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params8, params1)
