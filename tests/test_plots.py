"""Every figure the code writes, drawn from small fake data and checked as it is saved: no text
(titles, labels, tick labels, legends) falls outside the canvas, none is too small to read, the
title overlaps no other text, and the PNG is exactly the laid-out canvas (a tight bounding box
would crop or grow it, hiding text that the layout pushed off the figure)."""

import math

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from research.models.config import ATTENTION_NAMES
from research.report import machine_header

matplotlib.use("Agg")

MIN_POINTS = 6  # the smallest font a figure may use
# Titles as long as the experiments' own: the machine, then one long line of settings.
TITLE = (
    f"{machine_header()}\nquestion generation on people_daily from workdir:/tmp/seqlab/"
    "qagen/pretrain; seeds [0, 1, 2]; 600 steps of 32; 128 held-out pairs (questions, beam "
    "3), 64 held-out passages (4 answers sampled, top-p 0.9, top-k 0, in-passage filter "
    "True)"
)


def text_problems(fig: Figure, dpi: float) -> list[str]:
    """What is wrong with the figure's text as drawn at `dpi`: each drawn (visible, non-empty)
    Text artist's window extent must lie inside the figure's, its font be at least MIN_POINTS,
    the tick labels of one axis must not overlap each other, and the suptitle must overlap no
    other text."""
    fig.set_dpi(dpi)
    drawn: list[Text] = []
    draw = Text.draw

    def recording(self, renderer):
        if self.get_visible() and self.get_text():
            drawn.append(self)
        return draw(self, renderer)

    Text.draw = recording
    try:
        fig.canvas.draw()
    finally:
        Text.draw = draw
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    problems = []
    boxes = {id(t): t.get_window_extent(renderer) for t in drawn}
    for t in drawn:
        b = boxes[id(t)]
        name = repr(t.get_text()[:60])
        if (
            b.x0 < canvas.x0 - 1
            or b.y0 < canvas.y0 - 1
            or b.x1 > canvas.x1 + 1
            or (b.y1 > canvas.y1 + 1)
        ):
            problems.append(f"{name} at {b.bounds} leaves the canvas {canvas.bounds}")
        if t.get_fontsize() < MIN_POINTS:
            problems.append(f"{name} is {t.get_fontsize()} pt")
    for axis in (a for ax in fig.axes for a in (ax.xaxis, ax.yaxis)):
        # One axis's drawn, unrotated tick labels must not run together (rotated ones' boxes
        # overlap although their glyphs need not).
        ticks = [t for t in axis.get_ticklabels() if id(t) in boxes and t.get_rotation() == 0]
        for i, t in enumerate(ticks):
            for u in ticks[i + 1 :]:
                if boxes[id(t)].overlaps(boxes[id(u)]):
                    problems.append(
                        f"tick labels {t.get_text()[:30]!r} and {u.get_text()[:30]!r} overlap"
                    )
    title = fig._suptitle
    if title is not None and title.get_text():
        for t in drawn:
            if t is not title and boxes[id(title)].overlaps(boxes[id(t)]):
                problems.append(f"the title overlaps {t.get_text()[:60]!r}")
    return problems


@pytest.fixture
def saved_figures(monkeypatch):
    """Check every figure as it is saved (the saved layout, before the figure is closed):
    yields the list of (path, problems), one entry per savefig."""
    checked = []
    savefig = Figure.savefig

    def checking(fig, path, *args, **kwargs):
        assert kwargs.get("bbox_inches") is None, "a tight bbox hides clipped text: test the layout"
        dpi = kwargs.get("dpi", fig.dpi)
        problems = text_problems(fig, dpi)
        w, h = fig.get_size_inches()
        savefig(fig, path, *args, **kwargs)
        size = matplotlib.image.imread(path).shape[:2]
        if size != (round(h * dpi), round(w * dpi)):
            problems.append(f"saved {size[::-1]} pixels, not the {w} x {h} in canvas at {dpi} dpi")
        checked.append((path, problems))

    monkeypatch.setattr(Figure, "savefig", checking)
    return checked


def _fits(checked, count=1):
    assert len(checked) == count
    for path, problems in checked:
        assert not problems, f"{path.name}: " + "; ".join(problems)
        assert path.stat().st_size > 5_000


def test_the_helper_finds_clipped_text_and_tiny_fonts(tmp_path, saved_figures):
    """The check can fail: a title wider than the figure (as docs/qagen.png's was, before
    save_figure wrapped it), a label off the edge and a 4-point legend."""
    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], label="tiny")
    ax.legend(fontsize=4)
    fig.suptitle(TITLE.replace("\n", " "), fontsize=8)
    ax.set_ylabel("a label far off the left edge", labelpad=400)
    fig.savefig(tmp_path / "bad.png", dpi=100)
    ((_, problems),) = saved_figures
    assert any(p.startswith("'device ") and "leaves the canvas" in p for p in problems)
    assert any(p.startswith("'a label far off") for p in problems)
    assert any("'tiny' is 4.0 pt" in p for p in problems)


def test_the_helper_finds_overlapping_text_and_a_cropped_save(tmp_path, saved_figures):
    """The other checks can fail too: tick labels that run together, a suptitle drawn over an
    axes title, and a tight bounding box (refused) or a PNG whose pixels are not the canvas."""
    fig = Figure(figsize=(3, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(10), range(10))
    ax.set_xticks(range(10), [f"label number {i}" for i in range(10)])
    ax.set_title("the axes title", fontsize=14)
    fig.suptitle("the figure title", y=0.9, fontsize=14)
    fig.savefig(tmp_path / "overlap.png", dpi=100)
    ((_, problems),) = saved_figures
    assert any(p.startswith("tick labels 'label number") for p in problems), problems
    assert any(p == "the title overlaps 'the axes title'" for p in problems), problems
    with pytest.raises(AssertionError, match="a tight bbox hides clipped text"):
        fig.savefig(tmp_path / "tight.png", bbox_inches="tight")
    saved_figures.clear()
    ok = Figure(figsize=(3, 2))
    FigureCanvasAgg(ok)
    ok.add_subplot().plot([0, 1], [0, 1])
    ok.savefig(tmp_path / "small.png", dpi=50, pad_inches=0, bbox_inches=None, format="png")
    assert saved_figures[0][1] == []  # the canvas at 50 dpi: 150 x 100 pixels, as laid out
    with pytest.MonkeyPatch.context() as mp:  # a writer that drops pixels is caught
        real = matplotlib.image.imread
        mp.setattr(matplotlib.image, "imread", lambda path: real(path)[:-1])
        ok.savefig(tmp_path / "cut.png", dpi=50)
    assert saved_figures[1][1] == ["saved (150, 99) pixels, not the 3.0 x 2.0 in canvas at 50 dpi"]


def test_save_figure_wraps_a_long_title_inside_the_canvas(tmp_path, saved_figures):
    from research.report import save_figure

    with save_figure(tmp_path / "t.png", TITLE, 2, (6, 3)) as axes:
        for ax in axes:
            ax.plot([1, 2], [3, 4], label="line")
            ax.set(xlabel="x (units)", ylabel="a long y label that needs wrapping (units)")
            ax.legend()
    _fits(saved_figures)


def _qagen_rows(seeds):
    from research.experiments import qagen

    rng = np.random.default_rng(0)
    evals = [
        {
            **{k: float(rng.uniform(10, 90)) for k in qagen.METRICS},
            **{f"baseline_{k}": float(rng.uniform(50, 92)) for k in qagen.METRICS},
            # the template baseline scores the question metrics only
            **{f"baseline_template_{k}": 50.0 for k in qagen.METRICS if k.startswith("question")},
        }
        for _ in range(seeds)
    ]
    return qagen.summarize(evals)


@pytest.mark.parametrize("seeds", [1, 3])
def test_qagen(tmp_path, saved_figures, seeds):
    from research.experiments import qagen

    qagen.plot(_qagen_rows(seeds), tmp_path / "qagen.png", TITLE)
    _fits(saved_figures)


def test_pet(tmp_path, saved_figures):
    from research.experiments import pet

    templates = ["____满意。", "感觉很____。"]
    results = [
        {
            "setting": s,
            "pattern": "-" if s == "fine_tune" else p,
            "seed": seed,
            "validation": 60.0 + seed + p,
            "test": 58.0 + seed,
        }
        for s in (*pet.SETTINGS, "zero_shot_median")  # a label-free row: no note figure
        for p in range(2)
        for seed in range(3)
    ]
    rows = pet.summarize(results, pet.SETTINGS, templates)
    assert [r["setting"] for r in rows][:4] == ["zero_shot"] * 2 + ["zero_shot_median"] * 2
    pet.plot(rows, tmp_path / "pet.png", TITLE)
    _fits(saved_figures)


def test_pet_signal_curve(tmp_path, saved_figures):
    from research.experiments import pet_curve

    curve = [
        {"pattern": p, "step": step, "seed": seed, **dict.fromkeys(pet_curve.FIGURES, 0.5 + seed)}
        for p in range(2)
        for step in (500, 1000, 1500)
        for seed in range(3)
    ]
    rows = pet_curve.summarize(curve)
    assert [(r["pattern_id"], r["step"], r["seeds"]) for r in rows][:2] == [
        ("p0", 500, 3),
        ("p0", 1000, 3),
    ]
    assert rows[0]["auc_test_mean"] == pytest.approx(1.5)
    pet_curve.plot(rows, tmp_path / "mlm_curve.png", TITLE, 52.75)
    _fits(saved_figures)


def test_theseus(tmp_path, saved_figures):
    from research.experiments import theseus

    results = [
        {
            "kind": kind,
            "layers": k,
            "seed": seed,
            "validation": 55.0 + seed,
            "test": 54.0 + k,
            "pooled": 54.5 + k,
            "params": 1_000_000 * k,
            "tokens_per_s": 5000.0 / k,
        }
        for kind, k in (
            ("predecessor", 4),
            ("direct", 2),
            ("theseus", 2),
            ("direct", 1),
            ("theseus", 1),
        )
        for seed in range(3)
    ]
    rows = theseus.summarize(results, 4)
    theseus.plot(rows, tmp_path / "theseus.png", TITLE)
    _fits(saved_figures)


def test_gelu_both_figures(tmp_path, saved_figures):
    from research.experiments import gelu

    report = gelu.forms_report(num_points=2_000)
    gelu.plot_forms(tmp_path / "gelu_forms.png", report, TITLE)
    results = [
        {
            "activation": form,
            "seed": seed,
            "eval_loss": 2.0 + 0.01 * seed + 0.001 * i,
            "step_ms": 30.0 + i,
        }
        for i, form in enumerate(gelu.FORMS)
        for seed in range(3)
    ]
    gelu.plot(gelu.summarize(results, report), results, tmp_path / "gelu.png", TITLE)
    _fits(saved_figures, 2)


def test_exposure_bias(tmp_path, saved_figures):
    from research.experiments import exposure_bias as eb

    beams = [1, 2, 3]
    results = [
        {
            "point": {"variant": v, "seed": s},
            "eval": {f"beam{b}_{m}": 40.0 + 5 * b + s for b in beams for m in eb.METRICS},
        }
        for v in eb.VARIANTS
        for s in range(3)
    ]
    rows = eb.summarize(results, eb.VARIANTS, beams)
    eb.plot(rows, eb.VARIANTS, beams, tmp_path / "exposure_bias.png", TITLE)
    _fits(saved_figures)


def test_embedding_dim(tmp_path, saved_figures):
    from research.experiments import embedding_dim as ed

    results = [
        {
            "corpus": corpus,
            "vocab_size": n,
            "dim": d,
            "seed": 0,
            "eval_nll": 5.0 + 4.0 / d + 0.1 * math.log(n),
            "train_pairs": 100_000,
            "unigram_nll": 6.0 + 0.1 * math.log(n),
        }
        for corpus in ("wikitext", "people_daily")
        for n in (1000, 10_000)
        for d in (8, 16, 32, 64, 128)
    ]
    rows = ed.summarize(results, 0.01)
    ed.plot(results, rows, tmp_path / "embedding_dim.png", TITLE)
    _fits(saved_figures)


def test_compare_attention(tmp_path, saved_figures):
    from research.experiments import compare_attention as ca

    rows = [
        {
            "attention": a,
            "width": w,
            "mqar_accuracy": 0.5 + 0.1 * i,
            "mqar_best_lr": 0.01,
            "lm_loss": 4.0,
            "lm_perplexity": 55.0 + i + w / 64,
            "train_tokens_per_s": 1000.0,
            "decode_ms_1024": 0.2 if a == "softmax" else 0.03,
            "decode_ms_8192": 1.2 if a == "softmax" else 0.03,
            "state_bytes": 4096,
            "params": 100_000,
        }
        for i, a in enumerate(ATTENTION_NAMES)
        for w in (16, 32, 64)
    ]
    ca.plot(rows, tmp_path / "compare_attention.png", TITLE)
    # decode_contexts=() measures no latency: the third panel says so instead of failing
    bare = [{k: v for k, v in r.items() if not k.startswith("decode_ms_")} for r in rows]
    ca.plot(bare, tmp_path / "compare_attention_no_decode.png", TITLE)
    _fits(saved_figures, count=2)


def test_chat_bench(tmp_path, saved_figures):
    from research.bench import chat

    rows = [
        {"attention": a, "history_turns": h, "kept_ms": 5.0 + h, "reencode_ms": 5.0 + 4 * h}
        for a in chat.ATTENTIONS
        for h in (1, 2, 4, 8, 16, 32, 64)
    ]
    chat.plot(rows, tmp_path / "chat_latency.png", TITLE)
    _fits(saved_figures)


def test_attention_bench(tmp_path, saved_figures):
    from research.bench import attention

    lengths = (512, 2048, 8192, 32768)
    rows = [
        {"kind": kind, "impl": impl, "length": n, "seconds": 1e-7 * n, "tokens_per_second": 1e7 / n}
        for kind in ("fwd", "fwd+bwd")
        for impl in (*attention.IMPLS, attention.TORCH)
        for n in lengths
    ]
    rows += [
        {
            "kind": "decode",
            "impl": impl,
            "length": n,
            "seconds": 1e-4,
            "tokens_per_second": 1e4 * (1 if impl == "linear-state" else 1024 / n),
        }
        for impl in ("softmax-kv-cache", "linear-state")
        for n in (1024, 8192, 32768)
    ]
    attention.plot(rows, tmp_path / "attention.png", TITLE)
    _fits(saved_figures)


def test_plan_attention(tmp_path, saved_figures):
    from research.plan import attention

    rows = [
        {
            "variant": v,
            "length": n,
            "roofline_s": 1e-9 * n * (i + 1),
            "memory_bytes": 2**20 * n / 1024,
        }
        for i, v in enumerate(attention.VARIANTS)
        for n in (1024, 16384, 262144, 1048576)
    ]
    attention.plot(rows, tmp_path / "plan_attention.png", TITLE)
    _fits(saved_figures)


def test_plan_sweeps(tmp_path, saved_figures):
    from research.plan import chips
    from research.plan.output import plot_fsdp, plot_layers

    GiB = 2**30
    chip = chips.CHIPS["v5e"]
    fsdp = [
        {
            "fsdp": f,
            "argument_bytes": 14 * GiB / f,
            "temp_bytes": 9.5 * GiB,
            "total_bytes": 14 * GiB / f + 9.5 * GiB,
        }
        for f in (16, 32, 64, 128, 256)
    ]
    plot_fsdp(fsdp, chip, tmp_path / "plan_fsdp.png", TITLE)
    layers = [
        {
            "layers": n,
            "compile_s": 40.0 + n,
            "argument_bytes": n * GiB / 20,
            "temp_bytes": 5 * GiB + n * GiB / 8,
        }
        for n in (6, 12, 24, 48)
    ]
    plot_layers(layers, chip, tmp_path / "plan_layers_scanned.png", TITLE)
    _fits(saved_figures, 2)
