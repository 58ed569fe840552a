"""configs/exposure_bias.py:smoke end to end: the sweep, SCST seeded from the baseline, outputs."""

import csv
import json
import shutil

import pytest


def test_smoke_sweep(tmp_path, capsys):
    """In process (the CLI path of experiments is test_compare_attention's)."""
    from configs import exposure_bias as config
    from research.experiments import EXPERIMENTS

    c = config.get_config("smoke")
    c.base.data.data_dir = str(tmp_path / "data")
    c.variants = ("baseline", "scst")
    c.base.seq2seq.eval_beams = (1, 2)
    EXPERIMENTS["exposure_bias"](c, str(tmp_path / "wd"))
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "wd" / "exposure_bias.csv")))
    assert [(x["variant"], x["beam"]) for x in rows] == [
        (v, b) for v in ("baseline", "scst") for b in ("1", "2")
    ]
    for x in rows:
        assert 0.0 <= float(x["rougeL_mean"]) <= 100.0 and 0.0 <= float(x["bleu_mean"]) <= 100.0
        # one seed: the table's figures are the run's own final evaluation, as it logged it
        run = tmp_path / "wd" / "runs" / f"{x['variant']}_seed0" / "metrics.jsonl"
        logged = [json.loads(line) for line in run.read_text().splitlines()]
        final = [e for e in logged if e.get("split") == "eval"][-1]
        for m in ("rougeL", "bleu", "exact"):
            assert float(x[f"{m}_mean"]) == pytest.approx(final[f"beam{x['beam']}_{m}"]), m
    assert (tmp_path / "wd" / "exposure_bias.png").stat().st_size > 10_000
    assert "| beam | baseline | scst |" in out
    # SCST resumed from the baseline's checkpoint 2 steps before the end (4 of 6 steps).
    scst = tmp_path / "wd" / "runs" / "scst_seed0"
    assert "resumed from step 4" in out
    steps = [json.loads(x)["step"] for x in (scst / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) == 5
    # The seeded checkpoint was copied beside the run and renamed in: no copy is left over.
    assert not list(scst.glob("checkpoints.copy-*")) and (scst / "checkpoints" / "4").is_dir()
    # A copy cut short (as the earlier code could leave one) is replaced, not left unreadable.
    from research.experiments import exposure_bias

    base = tmp_path / "wd" / "runs" / "baseline_seed0" / "checkpoints" / "4"
    cut = tmp_path / "cut" / "runs" / "scst_seed0" / "checkpoints" / "4"
    shutil.copytree(base, cut)
    victim = max((p for p in cut.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (tmp_path / "cut" / "runs" / "baseline_seed0").mkdir(parents=True)
    shutil.copytree(base.parent, tmp_path / "cut" / "runs" / "baseline_seed0" / "checkpoints")
    exposure_bias._seed_from_baseline(c, tmp_path / "cut", "scst", 0)
    assert exposure_bias._files(cut) == exposure_bias._files(base)


def test_unilm_with_linear_attention_is_refused_before_any_run(tmp_path):
    from configs import exposure_bias as config
    from research.config import ConfigError
    from research.experiments import EXPERIMENTS

    c = config.get_config("smoke")
    c.base.seq2seq.layout = "unilm"
    c.base.model.attention = "linear"
    with pytest.raises(ConfigError, match="needs model.attention='softmax'") as e:
        EXPERIMENTS["exposure_bias"](c, str(tmp_path / "wd"))
    assert "\n" not in str(e.value) and not (tmp_path / "wd").exists()


def test_penalty_epsilons_become_one_gradient_penalty_variant_each():
    from configs import exposure_bias as config
    from research.config import ConfigError
    from research.experiments import exposure_bias as eb
    from research.train.config import parse

    c = config.get_config("penalty_sweep")
    variants = eb.expand_variants(c.variants, c.penalty_epsilons)
    assert variants == [
        "baseline",
        "gradient_penalty_eps0.05",
        "gradient_penalty_eps0.1",
        "gradient_penalty_eps0.2",
        "gradient_penalty_eps0.5",
    ]
    assert c.base.data.source == "seq2seq_synthetic"  # the synthetic sorting task
    for v, eps in zip(variants[1:], (0.05, 0.1, 0.2, 0.5), strict=True):
        s = parse(eb.point_config(c, v, 0)).task_config
        assert (s.remedy, s.penalty_epsilon, s.penalty_form) == (
            "gradient_penalty",
            eps,
            "position",
        )
    assert parse(eb.point_config(c, "baseline", 0)).task_config.remedy == "none"
    for bad in ("gradient_penalty_epsx", "gradient_penalty_eps0", "dropout"):
        with pytest.raises(ConfigError, match="variants"):
            eb.point_config(c, bad, 0)
    # a variant named once by hand and once by penalty_epsilons: one run read twice
    c.variants = ("baseline", "gradient_penalty", "gradient_penalty_eps0.1")
    c.penalty_epsilons = (0.1,)
    with pytest.raises(ConfigError, match="'gradient_penalty_eps0.1' is given twice"):
        eb.run(c, "/nonexistent/never-written")


def test_zh_smoke_study_from_the_chinese_mlm(tmp_path, capsys, mlm_workdir):
    """configs/exposure_bias.py:zh_smoke end to end, in process: baseline / random replacement /
    gradient penalty on inews_titles from the session's smoke MLM, the config zh_smoke pretrains
    itself (that step: the next test and the qagen smoke study, through sweep.pretrain_first)."""
    from configs import exposure_bias as config
    from research.data.wordpiece import BertVocab
    from research.experiments import EXPERIMENTS
    from research.train.trained import load_trained

    c = config.get_config("zh_smoke")
    c.base.data.data_dir = str(tmp_path / "data")
    c.init = f"workdir:{mlm_workdir}"
    rows = EXPERIMENTS["exposure_bias"](c, str(tmp_path / "wd"))
    out = capsys.readouterr().out
    variants = ("baseline", "random_replacement", "gradient_penalty")
    assert [(r["variant"], r["beam"]) for r in rows] == [(v, b) for v in variants for b in (1, 2)]
    table = list(csv.DictReader(open(tmp_path / "wd" / "exposure_bias.csv")))
    assert [(x["variant"], x["beam"]) for x in table] == [
        (v, b) for v in variants for b in ("1", "2")
    ]
    for x in table:
        for m in ("rougeL", "rouge1", "rouge2", "bleu", "sentence_bleu", "exact"):
            assert 0.0 <= float(x[f"{m}_mean"]) <= 100.0, (m, x)
    assert "| beam | baseline | random_replacement | gradient_penalty |" in out
    assert "data inews_titles" in out and f"from workdir:{mlm_workdir}" in out
    assert "CJK per character" in out
    # Every run decoded with the MLM's character vocabulary (one token per character).
    for v in variants:
        vocab = load_trained(tmp_path / "wd" / "runs" / f"{v}_seed0").vocab
        assert isinstance(vocab, BertVocab)
        assert vocab.to_json() == load_trained(mlm_workdir).vocab.to_json()
        assert vocab.encode("中国人民") == [vocab.token_to_id(ch) for ch in "中国人民"]


def test_zh_pretrains_the_mlm_first_with_the_first_seed_and_the_base_data(tmp_path, monkeypatch):
    """init "": the experiment first trains `pretrain` in WORKDIR/pretrain, with its first seed and
    the base's data directory (recorded here, not trained: the qagen smoke study trains it)."""
    from configs import exposure_bias as config
    from research.experiments import EXPERIMENTS, sweep

    class Stop(Exception):
        pass

    calls = []

    def record(pc, out, meta):
        calls.append((pc, out, meta))
        raise Stop

    monkeypatch.setattr(sweep, "train_point", record)
    c = config.get_config("zh_smoke")
    c.seeds, c.base.data.data_dir = (3, 4), str(tmp_path / "data")
    with pytest.raises(Stop):
        EXPERIMENTS["exposure_bias"](c, str(tmp_path / "wd"))
    ((pc, out, meta),) = calls
    assert out == tmp_path / "wd" / "pretrain" and meta == {"setting": "pretrain"}
    assert pc.seed == 3 and pc.data.data_dir == str(tmp_path / "data")
    assert pc.model.to_dict() == config.get_config("zh_smoke").pretrain.model.to_dict()
