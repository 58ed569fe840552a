"""research.plan: the CPU path against a real run, and TPU compiles with the CLI's exit codes."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import lm
from research import tasks
from research.plan import chips, plan_train
from research.plan import train as plan_module
from research.plan.compiler import compile_for_devices
from research.train import optim, sharding, step
from research.train.config import parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'); TPU compiles skipped"
)


def _smoke(**mesh):
    c = lm.get_config("smoke")
    c.mesh.update(mesh)
    return c


def _device0_bytes(tree) -> int:
    dev = jax.devices()[0]
    return sum(
        s.data.nbytes
        for x in jax.tree.leaves(tree)
        for s in x.addressable_shards
        if s.device == dev
    )


def test_cpu_plan_predicts_a_real_runs_arrays_and_compiled_step():
    """Abstract state + the same rules give exactly the bytes a real run puts on each device,
    and the same compiled memory as the loop's step built from real arrays."""
    c = _smoke(data=2, fsdp=2, tensor=2)
    (plan,) = plan_train(c, jax.devices())

    # The real thing, as research.train.loop builds it.
    mesh = sharding.make_mesh(dict(c.mesh))
    run = parse(c)
    task = tasks.get(run.task)
    mcfg = task.model_config(run, vocab_size=c.data.vocab_size, max_length=c.data.seq_len)
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=0, dropout=1))
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(c.optimizer, c.num_train_steps)
    sh = step.state_shardings(opt, params, consts, mesh)
    state = step.init_state(opt, params, consts, 0, sh)
    shape = (c.batch_size, c.data.seq_len)
    dtypes = {"inputs": np.int32, "targets": np.int32, "weights": np.float32}
    batch = {
        k: jax.device_put(np.zeros(shape, dt), sharding.batch_sharding(mesh))
        for k, dt in dtypes.items()
    }
    real_args = _device0_bytes(state) + _device0_bytes(batch)
    assert plan.argument_bytes == real_args
    assert plan.alias_bytes == _device0_bytes(state)  # the donated state is updated in place

    train = step.make_train_step(
        model_def, opt, task.loss_fn(run, task.abstract_data(run)), mesh=mesh, shardings=sh
    )
    real = train.lower(state, batch).compile().memory_analysis()
    assert plan.temp_bytes == real.temp_size_in_bytes > 0
    assert plan.output_bytes == real.output_size_in_bytes

    # FLOPs against the 6 N T rule (Kaplan et al. 2020) for this device's tokens: the model is
    # tiny, so attention and the softmax add to it, but the order of magnitude must agree.
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    tokens_per_device = c.batch_size * c.data.seq_len / 4  # data x fsdp = 4
    assert 0.3 < plan.flops / (6 * n_params * tokens_per_device) < 3.0


def test_plan_rejects_a_batch_that_does_not_split_over_the_mesh():
    c = _smoke()
    c.batch_size = 6
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by mesh data x fsdp"):
        plan_train(c, jax.devices())
    # Whole batches that split, but microbatches that do not: 8 / 4 = 2 rows on 8 devices.
    c.batch_size, c.accum_steps = 8, 4
    with pytest.raises(
        ValueError,
        match=r"batch_size / accum_steps = 8 / 4 = 2 rows per "
        r"microbatch is not divisible by mesh data x fsdp = 8 x 1",
    ):
        plan_train(c, jax.devices())


@pytest.mark.parametrize("name", ["v5e:3", "v9:4x4", "v5e:4x4x4", "v5p:4x4"])
def test_bad_topology_names(name):
    with pytest.raises(ValueError, match="topology="):
        chips.parse_topology(name)


def _plan_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "research.plan", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_sweeps_write_tables_csv_and_png(tmp_path):
    """--layers_sweep (scanned here) and --fsdp_sweep on this machine's CPU devices: a row per
    value, CSV and PNG in --out; a bad value is one line, exit 2."""
    import csv

    smoke = ("--config=configs/lm.py:smoke", "--topology=cpu", f"--out={tmp_path}")
    r = _plan_cli(*smoke, "--layers_sweep=3,1", "--config.model.scan_layers=True")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "d32 x N layers (scanned)" in r.stdout and "compile time: max / min" in r.stdout
    rows = list(csv.DictReader((tmp_path / "plan_layers_scanned.csv").open()))
    assert [int(x["layers"]) for x in rows] == [1, 3]
    # Three layers hold three layers' parameters: more argument bytes than one.
    assert int(rows[1]["argument_bytes"]) > int(rows[0]["argument_bytes"])
    assert (tmp_path / "plan_layers_scanned.png").stat().st_size > 10_000
    r = _plan_cli(*smoke, "--fsdp_sweep=1,2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "plan_fsdp.csv").open()))
    assert [int(x["fsdp"]) for x in rows] == [1, 2]
    assert (tmp_path / "plan_fsdp.png").is_file()
    both = _plan_cli(*smoke, "--layers_sweep=1", "--fsdp_sweep=1")
    assert both.returncode == 2 and both.stderr.strip().splitlines()[-1] == (
        "error: give one of --fsdp_sweep and --layers_sweep"
    )
    bad = _plan_cli(*smoke, "--layers_sweep=2,x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("--layers_sweep=2,x: 'x' is not a positive integer")
    )


def test_scanned_plan_takes_the_model_flops_into_its_roofline():
    """XLA counts the scanned layer body once, so its FLOPs fall below the analytic count; the
    roofline takes the larger, so the MFU bound stays at most 1."""
    c = lm.get_config("smoke")
    c.model.update(d_model=128, num_heads=4, num_layers=4, d_ff=512, scan_layers=True)
    c.data.update(seq_len=64, vocab_size=512)
    plan = plan_train(c, jax.devices()[:1])[0]
    assert plan.flops < plan.model_flops
    chip = chips.cpu_chip(1)
    assert plan.roofline_seconds(chip) >= plan.model_flops / chip.peak_flops
    assert 0 < plan.mfu_bound(chip) <= 1


@needs_libtpu
def test_cli_tpu_fits_does_not_fit_and_bad_arguments():
    ok = _plan_cli("--config=configs/lm.py:smoke", "--topology=v5e:2x2", "--eval", "--decode=8")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| eval |" in ok.stdout and "| decode |" in ok.stdout
    lines = ok.stdout.splitlines()
    assert lines[0].startswith("FITS v5e:2x2 (4 x TPU v5e, 16.00 GiB HBM each, 15.75 GiB usable)")
    block = ok.stdout.split("\n\n")[0].splitlines()
    assert all(len(line) <= 100 for line in block) and len(block) >= 5
    memory_row, compute_row = (line for line in lines if line.startswith("| train"))
    cells = [x.strip() for x in compute_row.split("|")[1:-1]]
    assert float(cells[1].replace(",", "")) > 0  # GFLOP
    assert not [x.strip() for x in memory_row.split("|")[1:-1]][5].startswith("0 B")  # total

    # ~1.6B parameters with AdamW, replicated over data parallelism: far beyond 16 GiB.
    big = _plan_cli(
        "--config=configs/lm.py:smoke",
        "--topology=v5e:2x2",
        "--config.model.d_model=4096",
        "--config.model.d_ff=16384",
        "--config.model.num_layers=8",
        "--config.model.num_heads=32",
    )
    assert big.returncode == 3, big.stderr[-2000:]
    head = " ".join(" ".join(big.stdout.split("\n\n")[0].splitlines()[:2]).split())
    assert head.startswith("DOES NOT FIT v5e:2x2") and head.endswith(" GiB over")

    bad = _plan_cli("--config=configs/lm.py:smoke", "--topology=v5e:7")
    assert bad.returncode == 2 and "topology='v5e:7'" in bad.stderr
    assert "Traceback" not in bad.stderr
    mesh = _plan_cli("--config=configs/lm.py:smoke", "--topology=v5e:2x2", "--config.mesh.data=8")
    assert mesh.returncode == 2 and "mesh" in mesh.stderr and "Traceback" not in mesh.stderr


@needs_libtpu
def test_a_refused_compile_counts_its_arguments_once_and_v4_is_one_device_a_chip():
    """The compiler's out-of-memory figure is the whole live set: a donated 20 GiB argument
    doubled in place needs 20 GiB (it was counted as 40: arguments plus that figure), an
    undonated one 2 x 8.8 GiB. v4 plans one device per chip (megacore; it planned one per
    TensorCore against per-chip figures)."""
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from research.plan.compiler import compile_for_devices

    devices = chips.tpu_devices("v5e:2x2")
    one = NamedSharding(Mesh(np.asarray(devices[:1]), ("x",)), P())
    for gib, donate, want in ((20, True, 20.0), (8.8, False, 17.6)):
        arg = jax.ShapeDtypeStruct((int(gib * 2**28),), jnp.float32, sharding=one)
        fn = jax.jit(lambda x: x * 2, donate_argnums=0 if donate else ())
        plan, compiled = compile_for_devices("train", fn, arg)
        assert compiled is None and plan.note
        assert plan.total_bytes / 2**30 == pytest.approx(want, rel=0.01)
    assert len(chips.tpu_devices("v4:2x2x1")) == 4
    assert len(chips.tpu_devices("v5p:2x2x1")) == 4


def test_cli_missing_config_file_is_one_line():
    for extra in ([], ["--config.model.d_model=64"]):  # with an override it fails while parsing
        r = _plan_cli("--config=configs/no_such_config.py", "--topology=cpu", *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --config: [Errno 2] No such file or directory: 'configs/")


@pytest.mark.parametrize("attention", ["softmax", "linear", "gla", "gated_deltanet"])
def test_analytic_model_flops_match_xla_on_an_unrolled_step(attention):
    """6TN + 3TLM (M = 2 S H Dh for causal softmax, the chunked forms' count for the others)
    against XLA's count of the compiled CPU train step (64 tokens: one chunk, so XLA's loops
    run once and it sees every matmul): within 15% (XLA also counts the dense form's masked
    half, softmax, gates, norms and the optimizer). Measured: 1.06 softmax (1.03 with the
    masked half counted), 1.03 linear, 1.04 gla, 1.07 gated_deltanet."""
    from research.plan.train import model_flops

    c = lm.get_config("smoke")
    c.model.update(d_model=128, num_heads=4, num_layers=2, d_ff=512, attention=attention)
    c.data.update(seq_len=64, vocab_size=512)
    c.batch_size = 8
    plan = plan_train(c, jax.devices()[:1])[0]
    analytic = model_flops(parse(c))
    assert 0.85 < plan.flops / analytic < 1.15, (plan.flops, analytic)
    assert plan.model_flops == analytic and 0 < plan.mfu_bound(chips.cpu_chip(1))


@pytest.mark.parametrize(
    "remat, low, high, attention",
    [
        ("full", 0.95, 1.05, "softmax"),
        ("save_qkv_proj", 0.95, 1.05, "softmax"),
        ("save_dot_except_mlpwi", 0.95, 1.05, "softmax"),
        # the dense XLA form recomputes the masked half the count leaves out (x 2), and the
        # elementwise ops besides
        ("minimal", 2.0, 2.6, "softmax"),
        # the gated kinds' output gate and gate projections are saved with q/k/v, as counted
        ("save_qkv_proj", 0.95, 1.05, "gla"),
        ("save_qkv_proj", 0.95, 1.05, "gated_deltanet"),
    ],
)
def test_analytic_remat_flops_match_what_xla_adds(remat, low, high, attention):
    """The forward FLOPs a remat policy recomputes (remat_flops) against XLA's count of the
    unrolled CPU step with that policy minus without. The matmul policies agree within 5%;
    "minimal" recomputes only attention, which the count halves for the causal mask while the
    dense form computes all of it, and every elementwise op (norms, softmax, silu), which XLA
    counts and remat_flops (matmuls only) does not."""
    from research.plan.train import remat_flops

    c = lm.get_config("smoke")
    c.model.update(d_model=512, num_heads=4, num_layers=2, d_ff=2048, activation="swiglu")
    c.model.attention = attention
    c.data.update(seq_len=128, vocab_size=512)
    plain = plan_train(c, jax.devices()[:1])[0]
    c.model.remat = remat
    plan = plan_train(c, jax.devices()[:1])[0]
    analytic = remat_flops(parse(c))
    assert plan.remat_flops == analytic > 0 and plain.remat_flops == 0
    assert low < (plan.flops - plain.flops) / analytic < high, (plan.flops - plain.flops, analytic)
    # A step that recomputes cannot reach 100% MFU, whatever XLA counted.
    chip = chips.cpu_chip(1)
    assert plan.mfu_bound(chip) <= plan.model_flops / (plan.model_flops + analytic)


def test_collective_bytes_by_hand():
    from research.plan.train import collective_bytes

    p = 4e9  # 1B fp32 parameters
    assert collective_bytes(p, {"data": 1, "fsdp": 1, "tensor": 1}) == 0
    fsdp16 = collective_bytes(p, {"data": 1, "fsdp": 16, "tensor": 1})
    assert fsdp16 == pytest.approx(3 * 15 / 16 * p)
    # data 2 x fsdp 4 x tensor 2: 3 * 3/4 * p/2 + 2 * 1/2 * p/8
    got = collective_bytes(p, {"data": 2, "fsdp": 4, "tensor": 2})
    assert got == pytest.approx(3 * 0.75 * p / 2 + p / 8)


@needs_libtpu
def test_a_tpu_decode_plan_is_traced_with_the_tpus_block_sizes(monkeypatch):
    """The decode program was traced once outside the target's block sizes (an eval_shape),
    and jit reused that trace for the TPU compile: linear chunk blocks sized for the host."""
    from research.ops.attention import common, linear
    from research.ops.attention.linear import chunk

    seen = []

    def spy(backend=None):
        seen.append(backend or common._TARGET_BACKEND.get())
        return common.default_block_sizes(backend)

    for module in (linear, chunk):  # where the linear op reads its default
        monkeypatch.setattr(module, "default_block_sizes", spy)
    c = _smoke(fsdp=4)
    c.model.update(attention="linear", feature_map="elu", linear_form="chunked")
    plan_train(c, chips.tpu_devices("v5e:2x2"), decode_tokens=4)
    assert seen and set(seen) == {"tpu"}, seen


@needs_libtpu
def test_collective_bytes_count_the_weights_in_the_compute_dtype(monkeypatch):
    """XLA converts the fp32 parameters before gathering them and reduces their gradients in the
    compute dtype: a bf16 model's compiled step all-gathers bf16 weights and reduces bf16
    matrices (an fp32 model's, fp32), so its count is half (it was the same)."""
    import re

    programs = {}

    def keep(name, fn, *args):
        plan, program = compile_for_devices(name, fn, *args)
        programs[name] = program
        return plan, program

    monkeypatch.setattr(plan_module, "compile_for_devices", keep)
    gathered, reduced, counted = {}, {}, {}
    for dtype in ("float32", "bfloat16"):
        c = _smoke(fsdp=4)
        c.model.update(dtype=dtype, d_model=128, d_ff=256)
        counted[dtype] = plan_train(c, chips.tpu_devices("v5e:2x2"))[0].collective_bytes
        lines = programs["train"].as_text().splitlines()
        gathered[dtype] = {
            m.group(1)
            for line in lines
            if (m := re.search(r"= \(?(f32|bf16)\[\d+,\d+\].* all-gather(-start)?\(", line))
        }
        # the weight gradients' reductions: their 2-D (matrix) operands' element types
        results = [
            m.group(1)
            for line in lines
            if (m := re.search(r"= (.*?) (?:all-reduce|reduce-scatter)(?:-start)?\(", line))
        ]
        reduced[dtype] = {t for r in results for t in re.findall(r"\b(f32|bf16)\[\d+,\d+\]", r)}
    assert gathered == {"float32": {"f32"}, "bfloat16": {"bf16"}}
    assert reduced == {"float32": {"f32"}, "bfloat16": {"bf16"}}
    assert counted["bfloat16"] == counted["float32"] / 2 > 0


@needs_libtpu
def test_tpu_flash_kernel_compiles_per_device_for_v5e_and_drops_the_score_matrix():
    """softmax_implementation='tpu_flash' (the Pallas kernel under shard_map) compiles the
    whole train step for v5e:2x2 at length 4096; its temporaries are below the dense step's by
    at least one [B/4, H, L, L] fp32 score matrix; off TPU it is a config error."""
    c = _smoke(data=4)
    c.data.seq_len = 4096
    c.batch_size = 4
    c.model.update(num_heads=2, d_model=128, num_layers=1, dtype="bfloat16")
    devices = chips.tpu_devices("v5e:2x2")
    # Mosaic refuses bf16 matmuls at the fp32 precision conftest.py sets for CPU references.
    with jax.default_matmul_precision("default"):
        dense = plan_train(c, devices)[0]
        c.model.softmax_implementation = "tpu_flash"
        flash = plan_train(c, devices)[0]
    scores = 1 * 2 * 4096 * 4096 * 4  # per device: batch 1, 2 heads
    assert flash.temp_bytes > 0 and dense.temp_bytes - flash.temp_bytes >= scores
    # Packed documents go to the kernel as its segment ids (they used to make the model fall
    # back to blockwise): the compiled step still calls Mosaic, forward and backward.
    c.data.document_boundaries = True
    texts = []

    def keep_text(name, fn, *args):
        plan, compiled = compile_for_devices(name, fn, *args)
        texts.append(compiled.as_text())
        return plan, compiled

    with jax.default_matmul_precision("default"), pytest.MonkeyPatch.context() as m:
        m.setattr(plan_module, "compile_for_devices", keep_text)
        packed = plan_train(c, devices)[0]
    assert _mosaic_calls(texts[0]) >= 2 and packed.temp_bytes == flash.temp_bytes
    c.data.document_boundaries = False
    c.mesh.data = 1
    with pytest.raises(ValueError, match="'tpu_flash' needs a TPU .* backend is 'cpu'"):
        plan_train(c, jax.devices()[:1])


def _mosaic_calls(text: str) -> int:
    return text.count('custom_call_target="tpu_custom_call"')


@needs_libtpu
@pytest.mark.parametrize("kind", ["linear", "gla", "gla_scalar", "gated_deltanet"])
def test_each_pallas_kernel_lowers_through_mosaic_for_v5e_forward_and_backward(kind):
    """Every kernel's forward and backward, called through the public op with packed segments,
    bf16 inputs, 2,048 tokens and head dim 128, compiles for a v5e chip as two Mosaic calls."""
    from jax.sharding import SingleDeviceSharding

    from research.ops import attention as att

    on_chip = SingleDeviceSharding(chips.tpu_devices("v5e:2x2")[0])
    b, length, h, d = 1, 2048, 2, 128

    def spec(shape, dtype=jax.numpy.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=on_chip)

    def loss(q, k, v, g, beta, seg):
        kw = dict(segment_ids=seg, implementation="pallas")
        if kind == "linear":
            out = att.linear_attention(q, k, v, causal=True, **kw)
        elif kind == "gla":
            out = att.gated_linear_attention(
                q, k, v, jax.numpy.broadcast_to(g[..., None], q.shape), **kw
            )
        elif kind == "gla_scalar":
            out = att.gated_linear_attention(q, k, v, g, **kw)
        else:
            out = att.delta_rule_attention(q, k, v, beta, log_gate=g, **kw)
        return out.astype(jax.numpy.float32).sum()

    tokens = spec((b, length, h, d))
    scalars = spec((b, length, h), jax.numpy.float32)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    with jax.default_matmul_precision("default"):
        compiled = grad.lower(
            tokens, tokens, tokens, scalars, scalars, spec((b, length), jax.numpy.int32)
        ).compile()
    assert _mosaic_calls(compiled.as_text()) == 2


@needs_libtpu
def test_an_lm_step_with_the_pallas_kernels_compiles_per_device_for_v5e_within_the_xla_memory(
    monkeypatch,
):
    """model.linear_implementation='pallas' (the Mosaic kernels under shard_map): a linear-
    attention LM's whole train step, forward and backward, compiles for v5e:2x2 at 4,096 tokens
    with head dim 128, as two Mosaic calls (forward, backward), and its temporaries are no
    larger than the XLA chunked form's (docs/attention_kernels.md: every kind's figures)."""
    c = _smoke(data=4)
    c.data.seq_len = 4096
    c.batch_size = 4
    c.model.update(
        attention="linear",
        num_heads=2,
        d_model=256,
        num_layers=1,
        positions="none",
        dtype="bfloat16",
    )
    devices = chips.tpu_devices("v5e:2x2")
    from research.plan import train as plan_module

    compiled, real = [], plan_module.compile_for_devices

    def keep(*args):
        plan, executable = real(*args)
        compiled.append(executable.as_text())
        return plan, executable

    monkeypatch.setattr(plan_module, "compile_for_devices", keep)
    with jax.default_matmul_precision("default"):
        xla = plan_train(c, devices)[0]
        c.model.linear_implementation = "pallas"
        pallas = plan_train(c, devices)[0]
    assert [_mosaic_calls(text) for text in compiled] == [0, 2]
    assert pallas.note == "" and xla.note == ""
    assert 0 < pallas.temp_bytes <= xla.temp_bytes


@pytest.mark.parametrize("preset", ["1b", "1b_gdn", "7b"])
def test_pod_presets_are_valid_for_256_tpu_chips_and_refused_on_cpu(preset):
    """The presets pass every config check for v5e-256 / v5p-512 (256 chips, TPU kernel);
    on this CPU the softmax presets' TPU-only kernel is named in a ConfigError (1b_gdn has
    none). The Gated DeltaNet preset plans (and trains) packed rows whose documents stay apart:
    its step takes document_ids."""
    from research.plan.train import model_flops

    run = parse(lm.get_config(preset), num_devices=256, platform="tpu")
    n = {"1b": 1.3e9, "1b_gdn": 1.3e9, "7b": 6.7e9}[preset]  # GPT-3 XL's, LLaMA-2-7B's
    tokens = run.train.batch_size * run.data.seq_len
    assert 0.9 < model_flops(run) / (6 * n * tokens) < 1.35  # attention adds 6 L S d / 6 N
    batch = tasks.get(run.task).abstract_batch(run, run.train.batch_size)
    assert ("document_ids" in batch) == (preset == "1b_gdn")
    if preset != "1b_gdn":
        with pytest.raises(ValueError, match="'tpu_flash' needs a TPU"):
            parse(lm.get_config(preset), num_devices=256)


def test_a_packed_plan_compiles_the_step_with_its_document_ids():
    """The planner's step for a Gated DeltaNet LM with document_boundaries takes document_ids
    [B, L] int32 (each device its rows): the arguments grow by exactly those bytes."""
    c = _smoke(data=2, fsdp=2)
    c.model.update(attention="gated_deltanet", positions="none")
    (plain,) = plan_train(c, jax.devices()[:4])
    c.data.document_boundaries = True
    (packed,) = plan_train(c, jax.devices()[:4])
    rows_per_device = c.batch_size // 4  # data 2 x fsdp 2
    assert packed.argument_bytes - plain.argument_bytes == rows_per_device * c.data.seq_len * 4


def test_decode_plans_every_generating_model_and_refuses_others_before_compiling(monkeypatch):
    """--decode: an encoder-decoder decodes from bos after its source (it used to fail with a
    TypeError after the train step had compiled); a classifier is refused in one line before
    anything compiles."""
    from configs import classify, seq2seq
    from research.plan import train

    c = seq2seq.get_config("smoke")
    plans = plan_train(c, jax.devices()[:1], decode_tokens=4)
    assert [p.name for p in plans] == ["train", "decode"]
    assert plans[1].temp_bytes > 0 and plans[1].argument_bytes > 0
    assert plans[1].output_bytes == c.batch_size * 4 * 4  # [batch, 4] int32 tokens

    compiled = []
    monkeypatch.setattr(train, "compile_for_devices", lambda *a: compiled.append(a))
    with pytest.raises(ValueError, match=r"^--decode=4: the classify task's model .* generates"):
        plan_train(classify.get_config("smoke"), jax.devices()[:1], decode_tokens=4)
    assert compiled == []


@pytest.mark.parametrize("name", ["seq2seq", "classify"])
def test_tasks_the_decoder_lm_count_does_not_describe_rest_on_xlas_flops(name, capsys):
    """model_flops counts a decoder LM over data.seq_len tokens; a seq2seq step (source and
    target lengths, two stacks) measured 0.13 of it, a classifier 0.39: those tasks get no
    analytic count (so no MFU bound), and their roofline takes XLA's FLOPs."""
    import importlib

    from research.plan.output import report

    c = importlib.import_module(f"configs.{name}").get_config("smoke")
    p = plan_train(c, jax.devices()[:1])[0]
    assert p.model_flops == 0 and p.remat_flops == 0 and p.flops > 0
    text, _ = report([p], chips.cpu_chip(1), topology="cpu", chips=1, mesh_shape={}, c=c)
    assert f"none: no analytic FLOP count for task={name}" in " ".join(text.split())
