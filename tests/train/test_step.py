"""The same 5 training steps on 1 device, on a (2, 2, 2) mesh, on data=8, and with shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from research import tasks
from research.models import DecoderLM, ModelConfig, partitioning
from research.models.partitioning import REMAT_POLICIES
from research.train import optim, sharding, step

CFG = ModelConfig(
    vocab_size=64, d_model=32, num_heads=4, num_layers=2, d_ff=64, max_length=16, positions="rotary"
)
OPT = ConfigDict(
    dict(
        learning_rate=3e-3,
        warmup_steps=2,
        num_train_steps=5,
        schedule="cosine",
        weight_decay=0.1,
        grad_clip=1.0,
        adam_b1=0.9,
        adam_b2=0.99,
        adam_eps=1e-8,
    )
)


def _batches(n=5, b=16, length=12):
    """Random tokens whose targets are a fixed function of the input token (7 x + 3 mod 64), so
    five steps have something to learn (random targets moved the loss by 0.001)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        toks = rng.integers(0, 64, (b, length))
        weights = (rng.random((b, length)) < 0.9).astype(np.float32)  # uneven token counts
        out.append({"inputs": toks, "targets": (7 * toks + 3) % 64, "weights": weights})
    return out


def _run(mesh_shape=None, kind="jit", accum=1, remat="none", scan=False):
    cfg = CFG.replace(remat=remat, scan_layers=scan)
    model = DecoderLM(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(OPT, 5)
    devices = jax.devices() if mesh_shape else jax.devices()[:1]
    mesh = sharding.make_mesh(mesh_shape or {"data": 1}, devices)
    if kind == "shard_map":
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
        rep = sharding.replicated(mesh)
        sh = jax.tree.map(
            lambda _: rep,
            step.state_shardings(opt, params, consts, mesh),
            is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
        )
        train = step.make_shard_map_step(
            model_def, opt, tasks.lm_loss, mesh=mesh, accum_steps=accum
        )
    else:
        sh = step.state_shardings(opt, params, consts, mesh)
        train = step.make_train_step(
            model_def, opt, tasks.lm_loss, mesh=mesh, shardings=sh, accum_steps=accum
        )
    state = step.init_state(opt, params, consts, 0, sh)
    losses = []
    for batch in _batches():
        state, m = train(state, batch)
        losses.append(float(m["loss_sum"] / m["weight_sum"]))
    return jax.device_get(state.params), losses, state


def _per_layer(params):
    """A scanned model's parameters as the unrolled model names them (layers/i/...)."""
    if 0 in params["layers"]:
        return params
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    return {
        **params,
        "layers": {i: jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(n)},
    }


def _assert_same_run(run, reference):
    (params, losses, _), (ref_params, ref_losses, _) = run, reference
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    flat, ref = jax.tree.leaves_with_path(_per_layer(params)), jax.tree.leaves_with_path(ref_params)
    assert [k for k, _ in flat] == [k for k, _ in ref]
    for (_, a), (_, b) in zip(flat, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _one_device(cfg: ModelConfig):
    """(jit train step, initial state) of a DecoderLM with `cfg` on one device."""
    model = DecoderLM(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(OPT, 5)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    sh = step.state_shardings(opt, params, consts, mesh)
    train = step.make_train_step(model_def, opt, tasks.lm_loss, mesh=mesh, shardings=sh)
    return train, step.init_state(opt, params, consts, 0, sh)


@pytest.fixture(scope="module")
def reference():
    return _run()


@pytest.mark.parametrize(
    "mesh_shape, kind",
    [({"data": 2, "fsdp": 2, "tensor": 2}, "jit"), ({"data": -1}, "jit"), (None, "shard_map")],
    ids=["jit-2x2x2", "jit-data8", "shard_map-8"],
)
def test_sharded_steps_equal_single_device(reference, mesh_shape, kind):
    assert len(jax.devices()) == 8
    ref_params, ref_losses, _ = reference
    params, losses, state = _run(mesh_shape, kind)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert ref_losses[-1] < ref_losses[0] - 0.1  # it trains (4.20 -> 3.92 measured)
    if mesh_shape and mesh_shape.get("tensor"):
        # Parameters really are split: the q projection is sharded (fsdp, tensor).
        q = state.params["layers"][0]["attn"]["q"]["kernel"]
        assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
        assert q.addressable_shards[0].data.shape == (16, 16)


def test_fsdp_shards_every_parameter_and_its_adam_moments():
    """ZeRO-3: on fsdp=8 every parameter, the q/k/v and FFN biases included (their one dim is
    named for tensor parallelism), and both AdamW moments hold 1/8 of their elements per device,
    so per-device state bytes x fsdp equal the whole state's."""
    model = DecoderLM(CFG, rngs=nnx.Rngs(params=0, dropout=1))
    _, params, consts = step.split_model(model)
    opt = optim.make_optimizer(OPT, 5)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8}, jax.devices())
    sh = step.state_shardings(opt, params, consts, mesh)
    state = step.init_state(opt, params, consts, 0, sh)
    arrays = [x for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim]
    assert any(
        "bias" in jax.tree_util.keystr(k)
        for k, _ in jax.tree_util.tree_leaves_with_path(state.params)
    )
    for x in arrays:
        assert x.addressable_shards[0].data.size * 8 == x.size, (x.shape, x.sharding.spec)


def test_gradient_accumulation_is_exact(reference):
    _, ref_losses, _ = reference
    ref_params = reference[0]
    params, losses, _ = _run({"data": 2, "fsdp": 2, "tensor": 2}, accum=2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_optimizer_masks_norms_and_biases():
    model = DecoderLM(CFG, rngs=nnx.Rngs(0))
    _, params, _ = step.split_model(model)
    mask = optim.decay_mask(nnx.to_pure_dict(params))
    assert mask["layers"][0]["attn"]["q"]["kernel"] is True
    assert mask["layers"][0]["attn"]["q"]["bias"] is False
    assert mask["layers"][0]["attn_norm"]["scale"] is False
    # Stacked layers: a [layers, d] bias or scale is still not decayed, a kernel still is.
    model = DecoderLM(CFG.replace(scan_layers=True), rngs=nnx.Rngs(0))
    stacked = optim.decay_mask(nnx.to_pure_dict(step.split_model(model)[1]))
    assert stacked["layers"]["attn"]["q"]["kernel"] is True
    assert stacked["layers"]["attn"]["q"]["bias"] is False
    assert stacked["layers"]["attn_norm"]["scale"] is False
    assert stacked["embed"]["token"]["embedding"] is True
    sched = optim.learning_rate_schedule(peak=1.0, warmup_steps=10, total_steps=110, kind="cosine")
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(60)) - 0.5) < 1e-6 and float(sched(110)) < 1e-6


@pytest.mark.parametrize(
    "mesh, match",
    [
        ({"data": 3}, r"needs 3 devices, have 8"),
        ({"data": -1, "fsdp": -1}, "at most one -1"),
        ({"pipeline": 2}, r"unknown mesh axes \['pipeline'\]"),
        ({"data": -1, "fsdp": 3}, "not divide"),
    ],
)
def test_bad_mesh(mesh, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(mesh)


def test_bfloat16_compute_keeps_fp32_parameters():
    """dtype=bfloat16: the step's matmuls run in bf16 (counted in its jaxpr; the fp32 ones that
    remain are the loss's and the optimizer's), the parameters stay fp32, and the losses track
    the fp32 run to bf16 precision (measured 6e-5 relative) while falling."""
    import re

    train, state = _one_device(CFG.replace(dtype="bfloat16"))
    _, ref_losses, _ = _run()
    text = str(jax.make_jaxpr(train)(state, _batches()[0]))
    bf16 = len(re.findall(r"bf16\[[^\]]*\] = dot_general", text))
    f32 = len(re.findall(r"f32\[[^\]]*\] = dot_general", text))
    assert bf16 > 2 * f32 > 0, (bf16, f32)
    losses = []
    for batch in _batches():
        state, m = train(state, batch)
        losses.append(float(m["loss_sum"] / m["weight_sum"]))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-3)
    assert losses[-1] < losses[0] - 0.1


# (none, unrolled) on this mesh is test_sharded_steps_equal_single_device.
@pytest.mark.parametrize(
    "remat, scan", [(r, s) for r in REMAT_POLICIES for s in (False, True) if r != "none" or s]
)
def test_every_remat_policy_on_a_data_fsdp_tensor_mesh_equals_single_device(reference, remat, scan):
    _assert_same_run(_run({"data": 2, "fsdp": 2, "tensor": 2}, remat=remat, scan=scan), reference)


@pytest.mark.parametrize(
    "mesh_shape, kind", [({"data": -1}, "jit"), (None, "shard_map")], ids=["data8", "shard_map"]
)
def test_scanned_layers_on_other_meshes_equal_single_device(reference, mesh_shape, kind):
    run = _run(mesh_shape, kind, scan=True)
    _assert_same_run(run, reference)
    if kind == "jit":  # the stacked layers axis is never split; the rest is as unrolled
        q = run[2].params["layers"]["attn"]["q"]["kernel"]
        assert q.shape == (2, 32, 32) and q.sharding.spec[0] is None


def test_fsdp_never_splits_the_stacked_layers_axis():
    # 8 layers on fsdp=8: a bias [8, 32] must split its 32, not its layers dim (the scan slices
    # that every layer), and ZeRO-3 still leaves 1/8 of every parameter on each device.
    model = DecoderLM(CFG.replace(num_layers=8, scan_layers=True), rngs=nnx.Rngs(0))
    _, params, consts = step.split_model(model)
    opt = optim.make_optimizer(OPT, 5)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8}, jax.devices())
    sh = step.state_shardings(opt, params, consts, mesh)
    stacked = jax.tree.leaves(sh.params["layers"])
    assert stacked and all(s.spec[0] is None for s in stacked)
    state = step.init_state(opt, params, consts, 0, sh)
    for x in jax.tree.leaves(state.params):
        assert x.addressable_shards[0].data.size * 8 == x.size, (x.shape, x.sharding.spec)


def _loss(remat: str, length: int = 12, **kind):
    model = DecoderLM(CFG.replace(remat=remat, max_length=length, **kind), rngs=nnx.Rngs(0))
    model_def, params, consts = step.split_model(model)  # as the train step merges it
    params = nnx.to_pure_dict(params)
    batch = {k: jnp.asarray(v[:, :length]) for k, v in _batches(1, length=length)[0].items()}

    def loss(p):
        m = model_def.merge(p, consts, train=True, key=jax.random.key(0))
        s, w, _ = tasks.lm_loss(m, batch)
        return s / w

    return loss, params


def test_remat_policies_save_what_they_name():
    # What the backward pass keeps from the forward (jax's own accounting; the public
    # jax.ad_checkpoint.print_saved_residuals prints the same list): everything without remat,
    # only layer inputs with "full", plus exactly q/k/v with "save_qkv_proj".
    from jax._src.ad_checkpoint import saved_residuals

    saved = {}
    for remat in ("none", "minimal", "save_dot_except_mlp", "save_qkv_proj", "full"):
        loss, params = _loss(remat, length=64)
        text = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert ("checkpoint" in text or "remat" in text) == (remat != "none"), remat
        saved[remat] = sum(a.size * a.dtype.itemsize for a, _ in saved_residuals(loss, params))
    order = ["none", "minimal", "save_dot_except_mlp", "save_qkv_proj", "full"]
    assert all(saved[a] > saved[b] for a, b in zip(order, order[1:], strict=False)), saved
    qkv = CFG.num_layers * 3 * 16 * 64 * CFG.d_model * 4  # [B, L, H, Dh] fp32, per layer
    assert saved["save_qkv_proj"] - saved["full"] == pytest.approx(qkv, rel=0.01)


@pytest.mark.parametrize("attention", ["gla", "gated_deltanet"])
def test_remat_policies_name_the_recurrent_kinds_projections(attention):
    # The gated and delta kinds' q/k/v projections carry the same names (for the delta kinds
    # the dot outputs before their convolutions), and their gate projections "gate_proj", so
    # "save_qkv_proj" keeps exactly those: every projection the planner counts as q/k/v's kin
    # (research.plan.train.remat_flops), not recomputed.
    from jax._src.ad_checkpoint import saved_residuals

    saved = {}
    for remat in ("save_qkv_proj", "full"):
        loss, params = _loss(remat, length=64, attention=attention)
        saved[remat] = sum(a.size * a.dtype.itemsize for a, _ in saved_residuals(loss, params))
    hd = CFG.num_heads * CFG.head_dim
    # per token: q, k, v, the output gate (H Dh each), then GLA's low-rank gate (r, then H Dh)
    # or Gated DeltaNet's beta and decay (H each); fp32, 16 rows of 64 tokens, every layer
    width = 4 * hd + (CFG.gla_gate_rank + hd if attention == "gla" else 2 * CFG.num_heads)
    expected = CFG.num_layers * 16 * 64 * width * 4
    assert saved["save_qkv_proj"] - saved["full"] == pytest.approx(expected, rel=0.01)


def test_activations_are_constrained_only_inside_the_step_context():
    model = DecoderLM(CFG, rngs=nnx.Rngs(0))
    tokens = jnp.zeros((8, 12), jnp.int32)
    assert "sharding_constraint" not in str(jax.make_jaxpr(lambda t: model(t))(tokens))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with partitioning.activation_sharding(sharding.activation_resolver(mesh)):
        text = str(jax.make_jaxpr(lambda t: model(t))(tokens))
    # residual stream (embeddings + 2 per layer), q/k/v, context, out_proj, mlpwi, mlpwo, logits
    assert text.count("sharding_constraint") == 1 + CFG.num_layers * (2 + 5 + 2) + 1
    spec = sharding.logical_to_spec(
        ("activation_batch", "activation_length", "activation_embed"), (8, 12, 32), mesh
    )
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor")
    # A dim the mesh axes do not divide stays replicated.
    odd = sharding.logical_to_spec(("activation_batch", "activation_vocab"), (6, 63), mesh)
    assert odd == jax.sharding.PartitionSpec(None, None)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_remat_keeps_dropout_exact(scan):
    # The recomputed forward draws the same dropout masks: remat changes memory, not results.
    out = {}
    for remat in ("none", "full", "save_dot_except_mlp"):
        train, state = _one_device(CFG.replace(remat=remat, dropout=0.2, scan_layers=scan))
        losses = []
        for batch in _batches(3):
            state, m = train(state, batch)
            losses.append(float(m["loss_sum"] / m["weight_sum"]))
        out[remat] = (losses, jax.device_get(state.params))
    for remat in ("full", "save_dot_except_mlp"):
        np.testing.assert_allclose(out[remat][0], out["none"][0], rtol=1e-6)
        for a, b in zip(
            jax.tree.leaves(out[remat][1]), jax.tree.leaves(out["none"][1]), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_the_loss_key_is_none_of_the_dropout_draws():
    """The loss's key (for remedies that sample) is none of the model's dropout keys: each
    Dropout's stream key (reseeded from the step key, one per module) or its draws
    fold_in(stream key, n). The loss key was fold_in(step key, 1), the first layer's stream
    key: a loss drawing fold_in(its key, n) repeated that layer's dropout masks' keys."""
    model = DecoderLM(CFG.replace(dropout=0.2), rngs=nnx.Rngs(params=0, dropout=1))
    model_def, params, consts = step.split_model(model)
    seen = {}

    def loss_fn(model, batch, *, key, step=None):
        seen["loss"] = jax.random.key_data(key).tolist()
        streams = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model, nnx.RngKey))]
        seen["dropout"] = [jax.random.key_data(s).tolist() for s in streams] + [
            jax.random.key_data(jax.random.fold_in(s, n)).tolist()
            for s in streams
            for n in range(64)
        ]
        return tasks.lm_loss(model, batch)

    batch = {k: jnp.asarray(v) for k, v in _batches(1)[0].items()}
    step._grads(model_def, loss_fn, params, consts, batch, jax.random.key(3))
    assert seen["dropout"] and seen["loss"] not in seen["dropout"]


def test_two_steps_equal_optax_applied_to_the_token_mean_loss_by_hand():
    """The jit train step against an update built outside research.train: the gradient of the
    token-weighted mean cross-entropy (optax's, on the model's logits), clipped by global norm,
    then AdamW (warmup-cosine schedule, no decay on 1-D parameters) from optax's own pieces;
    two steps, with uneven token weights. The step's grad_norm is that gradient's norm."""
    import optax

    model = DecoderLM(CFG, rngs=nnx.Rngs(params=0, dropout=1))
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    train, state = _one_device(CFG)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, 3e-3, 2), optax.cosine_decay_schedule(3e-3, 3)], [2]
    )
    mask = jax.tree.map(lambda p: p.ndim >= 2, params)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, mask=mask),
    )
    opt_state = opt.init(params)

    def mean_loss(params, batch):
        logits = nnx.merge(graph, params, rest)(jnp.asarray(batch["inputs"]))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return jnp.sum(ce * batch["weights"]) / jnp.sum(batch["weights"])

    for batch in _batches(2):
        loss, grads = jax.value_and_grad(mean_loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        state, m = train(state, batch)
        assert float(m["loss_sum"] / m["weight_sum"]) == pytest.approx(float(loss), rel=1e-5)
        assert float(m["grad_norm"]) == pytest.approx(
            float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))), rel=1e-4
        )
    want = jax.tree.leaves_with_path(nnx.to_pure_dict(params))
    got = dict(jax.tree.leaves_with_path(jax.device_get(state.params)))
    assert len(want) == len(got) > 10
    for path, w in want:
        np.testing.assert_allclose(got[path], w, rtol=1e-4, atol=1e-6)
