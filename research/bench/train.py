"""Training throughput of the real sharded train step: tokens/s and model FLOP utilisation.

    python -m research.bench.train [--layers 6 --d_model 512 --heads 8 --length 512 --batch 8
                                    --vocab 8192 --attention softmax --steps 5 --out DIR]
                                    [--scan_layers --remat full]

MFU = model FLOPs per step / step time / peak, the peak one device's measured matmul in the
run's dtype (research.report.matmul_peak) times the devices the step runs on (on a CPU the
host's, however many fake devices share it), with the
PaLM count (Chowdhery et al. 2022, appendix B) with causal attention halved, as MaxText counts:
6 N + 6 n_layers d_model length FLOPs per token (PaLM: 12, the mask's skipped half included),
N the parameters that multiply activations (the tied output projection included, lookups not);
for the other attention kinds 6 d_model length becomes 3 x their own mixing FLOPs per token
(`research.models.flops.mixing_flops`).
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.cli import out_dir, positive_int
from research.config import OptimizerConfig
from research.models import DecoderLM, ModelConfig
from research.models.flops import mixing_flops
from research.models.partitioning import REMAT_POLICIES
from research.ops.attention import SOFTMAX_IMPLEMENTATIONS, softmax
from research.report import format_table, machine_header, matmul_peak, median_time, write_csv
from research.tasks import lm_loss
from research.train import optim, sharding, step


def model_flops_per_token(cfg: ModelConfig, params) -> float:
    """6 N + 3 n_layers M: M the attention's forward mixing FLOPs per token at max_length
    (`research.models.flops.mixing_flops`; 2 length d_model for causal softmax)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    # lookups multiply nothing: the position table, and the token table unless it is tied to
    # the output projection (untied, that projection is a parameter of its own)
    lookups = ("position",) if cfg.tie_embeddings else ("position", "'token'")
    n = sum(
        x.size for path, x in leaves if not any(w in jax.tree_util.keystr(path) for w in lookups)
    )
    return 6.0 * n + 3.0 * cfg.num_layers * mixing_flops(cfg, cfg.max_length)


def model_shape(args) -> dict:
    """ModelConfig's size keys from a benchmark's --vocab, --d_model, --heads and --layers, with
    the usual d_ff = 4 x d_model (research.bench.decode shares it)."""
    return dict(
        vocab_size=args.vocab,
        d_model=args.d_model,
        num_heads=args.heads,
        num_layers=args.layers,
        d_ff=4 * args.d_model,
    )


def check_model(parser: argparse.ArgumentParser, args, model_config) -> None:
    """Exit 2 with the model's own one-line check (such as d_model divisible by heads) before
    anything runs (research.bench.decode shares it)."""
    try:
        cfg = model_config(args)
        if cfg.attention == "softmax":  # a kernel this backend lacks: refused before tracing
            softmax.check_backend(cfg.softmax_implementation)
    except ValueError as e:
        parser.error(str(e))


def model_config(args) -> ModelConfig:
    return ModelConfig(
        **model_shape(args),
        max_length=args.length,
        attention=args.attention,
        softmax_implementation=args.softmax_implementation,
        linear_implementation=args.linear_implementation,
        positions="learned",
        dtype=args.dtype,
        scan_layers=args.scan_layers,
        remat=args.remat,
    )


def run(args) -> dict:
    cfg = model_config(args)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=10), 1000)
    mesh = sharding.make_mesh({"data": -1})
    shardings = step.state_shardings(opt, params, consts, mesh)
    state = step.init_state(opt, params, consts, 0, shardings)
    train = step.make_train_step(model_def, opt, lm_loss, mesh=mesh, shardings=shardings)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, args.vocab, (args.batch, args.length + 1)).astype(np.int32)
    batch = {
        "inputs": toks[:, :-1],
        "targets": toks[:, 1:],
        "weights": np.ones((args.batch, args.length), np.float32),
    }
    flops_token = model_flops_per_token(cfg, nnx.to_pure_dict(params))
    holder = {"state": state}

    def one_step():
        holder["state"], m = train(holder["state"], batch)
        return m["loss_sum"]

    seconds = median_time(lambda: one_step(), repeats=args.steps, warmup=2)
    # The step runs on every device of the mesh, in the model's dtype: so does the roofline.
    # Fake CPU devices share the host's cores, and one device's matmul already uses them all.
    devices = 1 if jax.default_backend() == "cpu" else mesh.devices.size
    peak = matmul_peak(dtype=jnp.dtype(args.dtype)) * devices
    tokens = args.batch * args.length
    return {
        "layers": args.layers,
        "d_model": args.d_model,
        "heads": args.heads,
        "length": args.length,
        "batch": args.batch,
        "vocab": args.vocab,
        "attention": args.attention,
        "implementation": (
            args.softmax_implementation
            if args.attention == "softmax"
            else args.linear_implementation
        ),
        "dtype": args.dtype,
        "scan_layers": args.scan_layers,
        "remat": args.remat,
        "step_seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "model_tflops_per_step": flops_token * tokens / 1e12,
        "devices": devices,
        "matmul_peak_gflops": peak / 1e9,  # all `devices` together
        "mfu": flops_token * tokens / seconds / peak,
    }


COLUMNS = ("step s", "tokens/s", "model TFLOP/step", "matmul peak GFLOP/s", "MFU")
FORMATS = (
    "{step_seconds:.3f}",
    "{tokens_per_second:,.0f}",
    "{model_tflops_per_step:.3f}",
    "{matmul_peak_gflops:.1f}",
    "{mfu:.1%}",
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=positive_int, default=6)
    p.add_argument("--d_model", type=positive_int, default=512)
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--length", type=positive_int, default=512)
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--vocab", type=positive_int, default=8192)
    p.add_argument(
        "--attention",
        default="softmax",
        choices=["softmax", "linear", "gla", "retnet", "deltanet", "gated_deltanet"],
    )
    p.add_argument("--softmax_implementation", default="xla", choices=list(SOFTMAX_IMPLEMENTATIONS))
    p.add_argument(
        "--linear_implementation",
        default="xla",
        choices=["xla", "pallas"],
        help="the linear kinds' chunked form: XLA or the Pallas TPU kernels",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--scan_layers", action="store_true", help="model.scan_layers (one lax.scan)")
    p.add_argument("--remat", default="none", choices=list(REMAT_POLICIES))
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps (median; 2 warm-up)")
    p.add_argument("--out", type=out_dir, default="", help="directory for train_bench.csv")
    args = p.parse_args(argv)
    if args.batch % jax.device_count():
        p.error(f"--batch {args.batch} must be divisible by the {jax.device_count()} devices")
    check_model(p, args, model_config)
    r = run(args)
    print(machine_header())
    print(
        f"DecoderLM {r['layers']}L d{r['d_model']} h{r['heads']} len {r['length']} batch "
        f"{r['batch']} vocab {r['vocab']} {r['attention']} ({r['implementation']}) {r['dtype']}, "
        f"{'scanned' if r['scan_layers'] else 'unrolled'} layers, remat {r['remat']}, AdamW, jit "
        f"train step on {r['devices']} device(s); MFU against {r['devices']} x one device's "
        f"measured {r['dtype']} matmul\n"
    )
    print(format_table([r], COLUMNS, FORMATS, align="rrrrr"))
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "train_bench.csv", [r])
        print(f"\nwrote {out / 'train_bench.csv'}")
    return r


if __name__ == "__main__":
    main()
