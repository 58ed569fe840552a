import dataclasses
import hashlib
import json
import pathlib
import sys
import sysconfig

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from research.data import DataError, builders, lm, sources, tokenizer
from research.data import shards as data_shards
from research.data.config import DataConfig


@pytest.mark.parametrize("kv, length", [(4, 32), (16, 64), (8, 256)])
def test_mqar_examples_follow_the_zoology_definition(kv, length):
    rng = np.random.default_rng(kv)
    v = 128
    ex = builders.mqar_example(rng, vocab_size=v, seq_len=length, num_kv_pairs=kv)
    seq = np.concatenate([ex["inputs"], ex["targets"][-1:]])
    keys, values = seq[0 : 2 * kv : 2], seq[1 : 2 * kv : 2]
    assert np.all((1 <= keys) & (keys < v // 2)) and len(set(keys)) == kv
    assert np.all((v // 2 <= values) & (values < v))
    pos = np.flatnonzero(ex["weights"])
    assert len(pos) == kv and np.all(pos >= 2 * kv)
    lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
    assert sorted(ex["inputs"][pos].tolist()) == sorted(keys.tolist())  # each key queried once
    for p in pos:  # the label at a query is that key's value
        assert ex["targets"][p] == lookup[int(ex["inputs"][p])]
    with pytest.raises(ValueError, match="4 \\* num_kv_pairs <= seq_len"):
        builders.mqar_config(seq_len=16, num_kv_pairs=8)


@pytest.mark.parametrize("kv, length", [(4, 64), (16, 256), (64, 256)])
def test_mqar_zoology_variant_is_zoologys_multiquery_ar(kv, length):
    """Zoology's protocol: keys and values without replacement, context k1 v1 .. kn vn, each key
    queried once at an even offset after it, the value not shown after its query, random
    filler; query gaps follow p(g) ~ (g + 1)^(a - 1), a = 0.01."""
    rng = np.random.default_rng(kv)
    v = 512
    ex = builders.mqar_zoology_example(rng, vocab_size=v, seq_len=length, num_kv_pairs=kv)
    inputs, ctx = ex["inputs"], 2 * kv
    keys, values = inputs[0:ctx:2], inputs[1:ctx:2]
    assert np.all((1 <= keys) & (keys < v // 2)) and len(set(keys)) == kv
    assert np.all((v // 2 <= values) & (values < v)) and len(set(values)) == kv
    pos = np.flatnonzero(ex["weights"])
    assert len(pos) == kv and np.all(pos >= ctx) and np.all((pos - ctx) % 2 == 0)
    lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
    assert sorted(inputs[pos].tolist()) == sorted(keys.tolist())  # each key queried once
    for p in pos:  # the label at a query is its key's value
        assert ex["targets"][p] == lookup[int(inputs[p])]
    # The filler is random tokens, not zeros (Zoology's random_non_queries).
    filler = np.ones(length, bool)
    filler[:ctx] = filler[pos] = False
    assert len(np.unique(inputs[filler])) > filler.sum() // 4
    # Gaps: with one pair, the query's gap g over 2000 draws has Zoology's distribution:
    # P(g < space / 8) from the formula, within 3 standard errors.
    rng, n, space = np.random.default_rng(0), 2000, (length - 2) // 2
    gaps = []
    for _ in range(n):
        one = builders.mqar_zoology_example(rng, vocab_size=v, seq_len=length, num_kv_pairs=1)
        gaps.append((np.flatnonzero(one["weights"])[0] - 2) // 2)
    p = 0.01 * np.arange(1, space + 1) ** (0.01 - 1)
    want = p[: space // 8].sum() / p.sum()
    got = np.mean(np.asarray(gaps) < space // 8)
    assert abs(got - want) < 3 * np.sqrt(want * (1 - want) / n), (got, want)
    assert want > 0.3  # far from uniform (1/8): most queries come soon after the context


def test_mqar_pairs_need_as_many_distinct_keys_and_no_more():
    """Keys are drawn from [1, V/2) without replacement: V = 2n + 2 is the smallest vocabulary
    for n pairs (it was refused, with a message asking for more than the V given)."""
    rng = np.random.default_rng(0)
    for variant, draw in builders.MQAR_EXAMPLES.items():
        builders.mqar_config(vocab_size=10, seq_len=32, num_kv_pairs=4, variant=variant)
        row = draw(rng, vocab_size=10, seq_len=32, num_kv_pairs=4)
        assert len(set(row["inputs"][0:8:2])) == 4
    with pytest.raises(ValueError, match=r"num_kv_pairs=4 needs vocab_size >= 10 .*got 9"):
        builders.mqar_config(vocab_size=9, seq_len=32, num_kv_pairs=4)


def test_mqar_variant_is_checked_and_names_its_dataset():
    assert builders.mqar_config(variant="zoology").name.endswith("_zoology")
    assert builders.mqar_config().name == "v8192_l256_kv16_n20000_s0"  # datasets built before
    # A test set of another size is another dataset (it reused the default's test split).
    assert builders.mqar_config(test_examples=7).name == "v8192_l256_kv16_n20000_s0_t7"
    assert builders.seq2seq_config(test_examples=7).name.endswith("_n20000_s0_t7")


def test_a_reused_build_of_another_size_is_refused_not_read(tmp_path):
    """A build made under a name that did not encode the test size (as before) is refused in
    one line when the config asks for another size."""
    small = builders.mqar_config(vocab_size=64, seq_len=16, num_kv_pairs=2, train_examples=8,
                                 test_examples=5)  # fmt: skip
    b = builders.build(builders.Mqar, str(tmp_path), small)
    assert b.info.splits["test"].num_examples == 5
    stale = dataclasses.replace(small, test_examples=7)  # same name, as names were
    with pytest.raises(DataError, match=r"holds 5 test examples, its config asks for 7"):
        builders.build(builders.Mqar, str(tmp_path), stale)
    with pytest.raises(ValueError, match="mqar_variant='zoo': allowed seqlab, zoology"):
        DataConfig(mqar_variant="zoo")


def test_mqar_segments_mix_lengths_in_equal_shares_padded_with_weight_zero(tmp_path):
    cfg = builders.mqar_config(
        vocab_size=64,
        seq_len=32,
        train_examples=9,
        test_examples=3,
        variant="zoology",
        segments=("8:2", "16:4", "32:8"),
    )
    test = builders.build(builders.Mqar, str(tmp_path), cfg).as_data_source("test")
    train = builders.Mqar(data_dir=str(tmp_path), config=cfg, file_format="array_record")
    train = train.as_data_source("train")
    length_of = {2: 8, 4: 16, 8: 32}  # each segment has its own number of pairs here
    for source, n in ((train, 9), (test, 3)):
        pairs_seen = [int(source[i]["weights"].sum()) for i in range(len(source))]
        assert sorted(pairs_seen) == sorted([2, 4, 8] * (n // 3))  # equal shares
        for i in range(len(source)):
            ex = source[i]
            pairs = int(ex["weights"].sum())
            length = length_of[pairs]
            assert ex["inputs"].shape == (32,)
            # Past the segment's length: filler 0, target 0, weight 0.
            for k in ("inputs", "targets", "weights"):
                assert not ex[k][length:].any()
            # The context is `pairs` distinct keys, each followed by its value (without
            # replacement), and each weighted position queries one of those keys for its value.
            keys, values = ex["inputs"][0 : 2 * pairs : 2], ex["inputs"][1 : 2 * pairs : 2]
            assert len(set(keys)) == len(set(values)) == pairs
            value_of = dict(zip(keys.tolist(), values.tolist(), strict=True))
            for q in np.flatnonzero(ex["weights"]):
                assert ex["targets"][q] == value_of[int(ex["inputs"][q])]
    with pytest.raises(ValueError, match="mqar_segments: '16:5' needs 1 <= 4 \\* pairs <= length"):
        DataConfig(seq_len=32, mqar_segments=("16:5",))
    with pytest.raises(ValueError, match="mqar_segments: length 64 is longer than seq_len=32"):
        DataConfig(seq_len=32, mqar_segments=("64:4",))
    with pytest.raises(ValueError, match="mqar_segments: '64' is not 'LENGTH:PAIRS'"):
        DataConfig(seq_len=32, mqar_segments=("64",))


def test_builders_write_array_record_without_tensorflow(tmp_path):
    cfg = builders.mqar_config(
        vocab_size=64, seq_len=32, num_kv_pairs=4, train_examples=50, test_examples=5
    )
    b = builders.build(builders.Mqar, str(tmp_path), cfg)
    assert list(tmp_path.rglob("*.array_record*"))
    train = b.as_data_source("train")
    assert len(train) == 50 and train[0]["inputs"].shape == (32,)
    code = builders.build(builders.StdlibCode, str(tmp_path), f"py{builders.PYTHON_VERSION}-small")
    n = code.info.splits["train"].num_examples + code.info.splits["validation"].num_examples
    assert n == 60
    # The built split holds the files whose path relative to the stdlib hashes under 10% (the
    # small config's), by sha256 computed here (no generated codec among the first 60 files).
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    rels = [str(p.relative_to(root)) for p in builders.stdlib_files(str(root))[:60]]
    assert not any(r.startswith("encodings/") for r in rels)
    held = {r for r in rels if int(hashlib.sha256(r.encode()).hexdigest(), 16) % 100 < 10}
    got = {x["path"].decode() for x in code.as_data_source("validation")}
    assert got == held and held
    assert "tensorflow" not in sys.modules


def test_stdlib_split_is_by_a_hash_of_the_relative_path():
    """The same split on every machine: sha256 of the path relative to the stdlib, computed
    here, mod 100 below the validation percent; about 5% of the files."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    rels = [str(p.relative_to(root)) for p in builders.stdlib_files(str(root))]
    assert len(rels) > 400
    expected = [
        "validation" if int(hashlib.sha256(r.encode()).hexdigest(), 16) % 100 < 5 else "train"
        for r in rels
    ]
    assert [builders.split_of(r, 5) for r in rels] == expected
    share = expected.count("validation") / len(expected)
    assert 0.02 < share < 0.09


def test_no_stdlib_validation_file_is_a_copy_of_train_files():
    """Generated codecs split one by one put files in validation whose lines stood verbatim in
    their train siblings (cp737.py: about 75% of its characters)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    lines, split = {}, {}
    for p in builders.stdlib_files(str(root)):
        rel, text = str(p.relative_to(root)), p.read_text(encoding="utf-8", errors="replace")
        split[rel] = builders.stdlib_split(rel, text, 5)
        lines[rel] = [x.strip() for x in text.splitlines() if len(x.strip()) > 20]
    train = {x for rel, xs in lines.items() if split[rel] == "train" for x in xs}
    held = [rel for rel in split if split[rel] == "validation"]
    assert len(held) > 15
    copied = {rel: sum(x in train for x in lines[rel]) for rel in held}
    share = {rel: copied[rel] / max(len(lines[rel]), 1) for rel in held}
    # Hand-written files share some boilerplate (zlib_codec.py 0.68 with bz2_codec.py); the
    # generated ones were near-whole copies (0.98, 0.91, 0.86), 28% of validation's lines.
    assert max(share.values()) < 0.7, max(share.items(), key=lambda kv: kv[1])
    assert sum(copied.values()) / sum(len(lines[rel]) for rel in held) < 0.2


def test_text_source_tokenizer_is_trained_once_and_reused(tmp_path):
    docs = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs))
    c = ConfigDict(
        dict(
            data=dict(
                source=f"text:{path}", data_dir=str(tmp_path / "d"), vocab_size=300, small=False
            )
        )
    )
    train, evaluation, tok = sources.text_sources(DataConfig(**c.data))
    assert len(train) + len(evaluation) == 400 and len(evaluation) > 0
    model = next((tmp_path / "d" / "tokenizers").glob("*.model"))
    mtime = model.stat().st_mtime_ns
    _, _, tok2 = sources.text_sources(DataConfig(**c.data))
    assert model.stat().st_mtime_ns == mtime  # reused, not retrained
    s = "def f3(x):\n    return x * 3 + 9\n"
    assert tok2.decode(tok.encode(s)) == s  # lossless on code, whitespace included
    assert tok.piece_to_id("\n") not in (tokenizer.UNK_ID,)


def test_text_source_tokenizer_is_retrained_when_the_corpus_changes(tmp_path):
    """The cached tokenizer is keyed on a hash of its training text, not only the file's path."""
    path = tmp_path / "corpus.txt"
    d = DataConfig(source=f"text:{path}", data_dir=str(tmp_path / "d"), vocab_size=300)
    path.write_text("\n\n".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(300)))
    _, _, old = sources.text_sources(d)
    path.write_text("\n\n".join(f"class C{i}:\n    y = '{i}' * {i}\n" for i in range(300)))
    _, _, new = sources.text_sources(d)
    models = sorted((tmp_path / "d" / "tokenizers").glob("*.model"))
    assert len(models) == 2 and all(m.name.endswith("-300.model") for m in models)
    s = "class C7:\n    y = '7' * 7\n"
    assert len(new.encode(s)) < len(old.encode(s))  # learnt from the new corpus


def test_a_file_too_small_for_both_splits_is_named_with_the_remedy(tmp_path):
    path = tmp_path / "three.txt"
    path.write_text("one\n\ntwo\n\nthree\n")  # 5% held out by hash: none of the three
    d = DataConfig(source=f"text:{path}", data_dir=str(tmp_path / "d"), vocab_size=300)
    with pytest.raises(DataError) as e:
        sources.text_sources(d)
    assert str(e.value) == (
        f"data.source='text:{path}': its 3 documents split 3 train / 0 eval (5% held out by "
        "a hash of each); both need at least one: add documents"
    )


def test_malformed_jsonl_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"doc {i}", "source": "a", "target": "b"}) for i in range(5)]
    path.write_text("\n".join(lines[:3] + ['{"text": "cut off', *lines[3:]]))
    d = DataConfig(source=f"jsonl:{path}", data_dir=str(tmp_path / "d"), vocab_size=300)
    with pytest.raises(DataError, match=r"docs.jsonl:4: not valid JSON \(.*column \d+\)"):
        sources.text_sources(d)
    with pytest.raises(DataError, match=r"docs.jsonl:4: not valid JSON"):
        sources.seq2seq_sources(d, seed=0)
    path.write_text("\n".join([*lines[:2], "[1, 2]"]))
    with pytest.raises(DataError, match=r"docs.jsonl:3: expected a JSON object, got list"):
        sources.text_sources(d)
    path.write_bytes(b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"docs.jsonl: not UTF-8 text"):
        sources.text_sources(d)
    # JSON's escape of half an emoji (a lone surrogate): a UnicodeEncodeError deep in the split
    path.write_text(lines[0] + '\n{"text": "cut \\ud83d here", "source": "a", "target": "b"}')
    for read in (sources.text_sources, lambda d: sources.seq2seq_sources(d, seed=0)):
        with pytest.raises(DataError, match=r"docs.jsonl:2: holds a lone UTF-16 surrogate"):
            read(d)


def test_seq2seq_pairs_are_split_by_their_source(tmp_path):
    """Pairs were split by source + target, so one source's targets fell on both sides."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"source": f"s{i // 10}", "target": f"t{i}"} for i in range(400)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    d = DataConfig(source=f"jsonl:{path}", data_dir=str(tmp_path / "d"), vocab_size=300)
    train, evaluation, _ = sources.seq2seq_sources(d, seed=0)
    assert len(train) + len(evaluation) == 400 and evaluation
    assert not {r["source"] for r in train} & {r["source"] for r in evaluation}


def test_local_builds_are_quiet_and_leave_no_temporary_folder(tmp_path, monkeypatch, capfd, caplog):
    """Our builders print none of tfds' download messages, and the folder tfds makes in the
    temporary directory (tmp*tfds, never removed) is not made."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    cfg = builders.mqar_config(
        vocab_size=64, seq_len=32, num_kv_pairs=2, train_examples=8, test_examples=2
    )
    builders.build(builders.Mqar, str(tmp_path / "data"), cfg)
    builders.Mqar(data_dir=str(tmp_path / "data"), config=cfg).as_data_source("train")
    out, err = capfd.readouterr()
    shown = out + err + caplog.text
    for message in ("Downloading and preparing", "downloaded and prepared", "custom data config"):
        assert message not in shown
    assert not list(tmp.iterdir())


def _as_process(monkeypatch, p, n):
    monkeypatch.setattr(data_shards.jax, "process_index", lambda: p)
    monkeypatch.setattr(data_shards.jax, "process_count", lambda: n)


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_batches_and_saved_state_do_not_depend_on_the_process_count(monkeypatch, shards):
    """Process p of n gets rows [p B/n, (p+1) B/n) of the same global batches for n = 1, 2, 4,
    whatever the shard count; states saved by 4 processes restore on 1 and 2 (and back)."""
    records = [{"inputs": np.full(3, i, np.int32)} for i in range(64)]
    batch, steps = 8, 3

    def iterators(n):
        its = []
        for p in range(n):
            _as_process(monkeypatch, p, n)
            its.append(
                data_shards.array_iterator(
                    records, batch_size=batch, seed=5, train=True, shards=shards
                )
            )
        return its

    def global_batches(its, k):
        return [np.concatenate([next(it)["inputs"] for it in its]) for _ in range(k)]

    want = global_batches(iterators(1), 2 * steps)
    assert len({b.tobytes() for b in want}) == 2 * steps  # the stream moves on
    for n in (2, 4):
        np.testing.assert_array_equal(global_batches(iterators(n), 2 * steps), want)
    # Save after `steps` batches on 4 processes; resume on 1 and on 2, and 1 -> 4.
    four = iterators(4)
    global_batches(four, steps)
    saved = [it.get_state() for it in four]
    merged = data_shards.ShardedIterator.merge_states(saved)
    for n in (1, 2):
        its = iterators(n)
        for it in its:
            it.set_state(merged)
        np.testing.assert_array_equal(global_batches(its, steps), want[steps:])
    one = iterators(1)
    global_batches(one, steps)
    its = iterators(4)
    for it in its:
        it.set_state(data_shards.ShardedIterator.merge_states([one[0].get_state()]))
    np.testing.assert_array_equal(global_batches(its, steps), want[steps:])


def test_accelerator_read_ahead_gives_the_cpu_batches_and_states(monkeypatch):
    """On an accelerator the shard datasets read ahead in a background thread (shards.background;
    on CPU they do not): the batches and the saved states are the CPU path's, so a checkpoint
    moves between the two."""
    import grain
    import jax

    records = [{"inputs": np.full(3, i, np.int32)} for i in range(64)]

    def iterator():
        return data_shards.array_iterator(records, batch_size=8, seed=5, train=True, shards=2)

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    cpu = iterator()
    want = [next(cpu)["inputs"] for _ in range(6)]
    cpu = iterator()
    [next(cpu) for _ in range(3)]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    ahead = iterator()
    prefetch = grain.experimental.ThreadPrefetchIterDataset
    one_shard = dict(batch_size=8, seed=5, train=True)
    assert isinstance(data_shards.array_dataset(records, **one_shard), prefetch)
    np.testing.assert_array_equal([next(ahead)["inputs"] for _ in range(3)], want[:3])
    assert ahead.get_state() == cpu.get_state()  # the thread has read further; its state has not
    resumed = iterator()
    resumed.set_state(cpu.get_state())
    np.testing.assert_array_equal([next(resumed)["inputs"] for _ in range(3)], want[3:])
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert not isinstance(data_shards.array_dataset(records, **one_shard), prefetch)
    back = iterator()
    back.set_state(ahead.get_state())
    np.testing.assert_array_equal([next(back)["inputs"] for _ in range(3)], want[3:])


def test_shard_layout_errors(monkeypatch):
    _as_process(monkeypatch, 0, 3)
    with pytest.raises(
        ValueError, match="batch_size=8 must be divisible by data.shards=2 and by the 3 processes"
    ):
        data_shards.owned_shards(2, 8)
    _as_process(monkeypatch, 0, 1)
    it = data_shards.array_iterator(
        [{"x": np.zeros(1)}] * 8, batch_size=4, seed=0, train=True, shards=2
    )
    other = data_shards.array_iterator([{"x": np.zeros(1)}] * 8, batch_size=4, seed=0, train=True)
    with pytest.raises(ValueError, match="has 2 logical shards, this run 1"):
        other.set_state(it.get_state())


def test_list_states_of_earlier_checkpoints_merge_by_process(monkeypatch):
    """Checkpoints written before per-shard states hold a list per process (one shard each):
    merged by their file names, they restore today's iterator on any process count."""
    records = [{"inputs": np.full(2, i, np.int32)} for i in range(32)]
    its = []
    for p in range(2):
        _as_process(monkeypatch, p, 2)
        its.append(data_shards.array_iterator(records, batch_size=4, seed=1, train=True, shards=2))
    for it in its:
        next(it)
    old = [json.dumps(list(json.loads(it.get_state())["states"].values())) for it in its]
    merged = data_shards.ShardedIterator.merge_states(
        old, ["process_0-of-2.json", "process_1-of-2.json"]
    )
    _as_process(monkeypatch, 0, 1)
    one = data_shards.array_iterator(records, batch_size=4, seed=1, train=True, shards=2)
    one.set_state(merged)
    want = np.concatenate([next(it)["inputs"] for it in its])
    np.testing.assert_array_equal(next(one)["inputs"], want)


def test_lm_pipeline_shapes_weights_and_resume(tmp_path):
    docs = [{"text": f"x = {i}\n" * (i % 7 + 1)} for i in range(300)]
    tok = tokenizer.train_or_load(
        lambda: (d["text"] for d in docs), str(tmp_path / "t.model"), vocab_size=320
    )
    it = lm.lm_iterator(docs, tok, seq_len=16, batch_size=4, seed=3, train=True, shards=2)
    first = next(it)
    assert first["inputs"].shape == (4, 16) and first["weights"].dtype == np.float32
    np.testing.assert_array_equal(first["inputs"][:, 1:], first["targets"][:, :-1])
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    again = lm.lm_iterator(docs, tok, seq_len=16, batch_size=4, seed=3, train=True, shards=2)
    again.set_state(state)
    for a, b in zip(want, [next(again) for _ in range(3)], strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(DataError, match=r"data.vocab_size=100 is too small .* at least \d+"):
        tokenizer.train_or_load(
            lambda: (d["text"] for d in docs), str(tmp_path / "u.model"), vocab_size=100
        )
    other_seed = next(lm.lm_iterator(docs, tok, seq_len=16, batch_size=4, seed=4, train=True))
    assert not np.array_equal(other_seed["inputs"], first["inputs"])


def test_lm_rows_with_document_boundaries(tmp_path):
    """documents=True: the same tokens, document ids that change exactly after each EOS (the
    tokenizer's end of every document), and no target that starts another document."""
    docs = [{"text": f"y = {i}\n" * (i % 5 + 1)} for i in range(200)]
    tok = tokenizer.train_or_load(
        lambda: (d["text"] for d in docs), str(tmp_path / "t.model"), vocab_size=300
    )
    kw = dict(seq_len=24, batch_size=4, seed=0, train=False)
    plain = next(lm.lm_iterator(docs, tok, **kw))
    packed = next(lm.lm_iterator(docs, tok, **kw, documents=True))
    np.testing.assert_array_equal(plain["inputs"], packed["inputs"])
    assert "document_ids" not in plain
    ids, inputs = packed["document_ids"], packed["inputs"]
    assert ids.dtype == np.int32 and np.all(np.diff(ids, axis=1) >= 0)
    # A new document starts right after an EOS input token, and nowhere else.
    after_eos = inputs[:, :-1] == tokenizer.EOS_ID
    np.testing.assert_array_equal(np.diff(ids, axis=1) > 0, after_eos)
    # Targets that are a new document's first token (the EOS input's target) carry no weight;
    # every other real target keeps the plain rows' weight.
    np.testing.assert_array_equal(
        packed["weights"], plain["weights"] * (inputs != tokenizer.EOS_ID)
    )
    assert after_eos.sum() > 4  # several documents per row: the check above is not vacuous


def test_a_padded_packed_row_trains_no_padding_and_keeps_the_ids_ordered():
    """documents=True on a partial last window (packing marks its tail 0): no target is a pad
    (pad == pad would count as one document), a pad is no document's continuation, and the ids
    stay non-decreasing with the pads in one id of their own."""
    from research.data.lm import _shift

    seg = np.asarray([[1, 1, 1, 2, 2, 0, 0, 0]])
    toks = np.asarray([[5, 6, 7, 8, 9, 0, 0, 0]])
    b = _shift({"tokens": toks, "tokens_segment_ids": seg}, documents=True)
    np.testing.assert_array_equal(b["weights"], [[1, 1, 0, 1, 0, 0, 0]])
    ids = b["document_ids"][0]
    np.testing.assert_array_equal(ids[:5], [1, 1, 1, 2, 2])
    assert np.all(np.diff(ids) >= 0) and len(set(ids[5:]) - {1, 2}) == 1


@pytest.mark.parametrize("task", builders.SEQ2SEQ_TASKS)
def test_seq2seq_synthetic_tasks(task, tmp_path):
    rng = np.random.default_rng(0)
    for _ in range(20):
        src, tgt = builders.seq2seq_example(rng, task, 3, 9)
        digits = src - builders.DIGIT0
        if task == "addition":
            plus = int(np.flatnonzero(src == builders.PLUS)[0])
            a = int("".join(map(str, digits[:plus])))
            b = int("".join(map(str, digits[plus + 1 :])))
            assert "".join(str(d - builders.DIGIT0) for d in tgt) == str(a + b)
        else:
            want = {"copy": digits, "reverse": digits[::-1], "sort": np.sort(digits)}[task]
            np.testing.assert_array_equal(tgt - builders.DIGIT0, want)
            assert 3 <= len(src) <= 9
    cfg = builders.seq2seq_config(task, 3, 9, train_examples=30, test_examples=5)
    b = builders.build(builders.Seq2seqSynthetic, str(tmp_path), cfg)
    ex = b.as_data_source("train")[0]
    assert ex["source"].dtype == np.int32 and len(b.as_data_source("test")) == 5


def test_catalog_dataset_by_name_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    c = ConfigDict(
        dict(
            data=dict(
                source="tfds:tiny_shakespeare", data_dir=str(tmp_path), vocab_size=300, small=False
            )
        )
    )
    with tfds.testing.mock_data(num_examples=40):
        train, evaluation, tok = sources.text_sources(DataConfig(**c.data))
    assert len(train) == 40 and len(evaluation) == 40 and tok.vocab_size() > 256


def test_a_catalog_builder_that_needs_tensorflow_is_one_line(tmp_path, monkeypatch):
    """tiny_shakespeare's builder reads with tf.io: a bare ModuleNotFoundError traceback."""
    import tensorflow_datasets as tfds

    def needs_tf(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(tfds, "data_source", needs_tf)
    d = DataConfig(source="tfds:tiny_shakespeare", data_dir=str(tmp_path), vocab_size=300)
    with pytest.raises(DataError) as e:
        sources.text_sources(d)
    assert str(e.value) == (
        "data.source=tfds:tiny_shakespeare: its builder needs tensorflow; pip install -e '.[tf]'"
    )


def test_jsonl_source_and_clear_errors(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"line {i} " * 5}) for i in range(200)))
    c = ConfigDict(
        dict(
            data=dict(
                source=f"jsonl:{path}", data_dir=str(tmp_path / "d"), vocab_size=300, small=False
            )
        )
    )
    train, evaluation, _ = sources.text_sources(DataConfig(**c.data))
    assert len(train) + len(evaluation) == 200
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    c.data.source = f"jsonl:{tmp_path / 'bad.jsonl'}"
    with pytest.raises(DataError, match="bad.jsonl:1: a jsonl record needs a 'text' field"):
        sources.text_sources(DataConfig(**c.data))
    c.data.source = "tfds:glue/cola"  # needs TensorFlow, which the base install does not have
    with pytest.raises(DataError, match=r"pip install -e '.\[tf\]'"):
        sources.text_sources(DataConfig(**c.data))
    c.data.source = "parquet:x"
    with pytest.raises(DataError, match="use stdlib_code, tfds:NAME, text:PATH or jsonl:PATH"):
        sources.text_sources(DataConfig(**c.data))


def test_seq2seq_catalog_dataset_by_name_with_mock_data(tmp_path):
    """A seq2seq corpus by tfds name (here squad context -> question, mocked) gives batches."""
    import tensorflow_datasets as tfds

    from research.data import seq2seq

    c = ConfigDict(
        dict(
            seed=0,
            data=dict(
                source="tfds:squad",
                data_dir=str(tmp_path),
                vocab_size=300,
                source_key="context",
                target_key="question",
            ),
        )
    )
    with tfds.testing.mock_data(num_examples=24):
        # a feature the dataset lacks: one line naming those it has (was a KeyError inside
        # sentencepiece training), for the LM's 'text' and for a seq2seq key
        for read, kw in ((sources.text_sources, {}), (sources.seq2seq_sources, {"seed": 0})):
            bad = DataConfig(**{**c.data, "target_key": "answer"})
            with pytest.raises(
                DataError, match=r"tfds:squad: no feature '(text|answer)' .*context"
            ):
                read(bad, **kw)
        train, evaluation, vocab = sources.seq2seq_sources(DataConfig(**c.data), seed=c.seed)
        it = seq2seq.seq2seq_iterator(
            train, vocab, layout="encdec", src_len=16, tgt_len=8, batch_size=4, seed=0, train=True
        )
        batch = next(it)
    assert len(train) == 24 and vocab.tok is not None and vocab.size > 256
    assert batch["src"].shape == (4, 16) and batch["inputs"].shape == (4, 8)
    assert (batch["inputs"][:, 0] == vocab.bos).all() and batch["weights"].sum() > 0
    rows = batch["weights"].sum(1).astype(int)  # the EOS sits right after the target tokens
    assert all(batch["targets"][i, rows[i] - 1] == vocab.eos for i in range(4))
    # The Vocab protocol: encode(text) gives the tokenizer's ids; records go to encode_record.
    assert vocab.encode("what is it") == list(vocab.tok.encode("what is it"))
    src, tgt = vocab.encode_record({"context": "what is it", "question": "it is"})
    assert list(src) == vocab.encode("what is it") and list(tgt) == vocab.encode("it is")
    synthetic = sources.Seq2seqVocab(14, 0, 1, 2)
    with pytest.raises(ValueError, match="synthetic seq2seq data has no text tokenizer"):
        synthetic.encode("1 2")


def _epoch_orders(seed, shard=0, shards=1, epochs=3, size=16):
    ds = data_shards.shard_records(
        list(range(size)), seed=seed, shuffle=True, repeat=True, shard=shard, shards=shards
    )
    it, per = iter(ds), size // shards
    return [tuple(next(it) for _ in range(per)) for _ in range(epochs)]


def test_seeds_and_shards_shuffle_independently():
    """grain shuffles epoch e with seed + e: with the run seed passed as it was, seed 1's first
    epoch was seed 0's second (every epoch but one shared), and every shard took the same
    permutation (a batch of neighbouring records)."""
    orders = {s: _epoch_orders(s) for s in range(3)}
    for s, t in ((0, 1), (1, 2), (0, 2)):
        assert not set(orders[s]) & set(orders[t]), (s, t)
    positions = {
        tuple(np.argsort(order)) for i in range(4) for order in _epoch_orders(0, i, 4, epochs=1)
    }
    assert len(positions) > 1  # not one permutation for all four shards
    assert data_shards.derived_seed(0, 1) != data_shards.derived_seed(1, 0)


def test_several_processes_need_one_data_folder(tmp_path, monkeypatch):
    """Process 0 builds in data_dir and the others read there: a process on a host that sees
    its own empty folder failed inside tfds (KeyError: splits is empty). One process here plays
    process 0 of two, and the other's view comes back as not seeing the mark."""
    from jax.experimental import multihost_utils

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: x)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: None)
    views = []

    def gather(x):  # process 0's view and process 1's (another host: nothing there)
        views.append(int(x))
        return np.asarray([int(x), 0])

    monkeypatch.setattr(multihost_utils, "process_allgather", gather)
    folder = tmp_path / "data"
    with pytest.raises(DataError, match=r"data_dir=.*: process\(es\) 1 do not see what process 0"):
        data_shards.check_shared_data_dir(str(folder))
    assert views == [1] and not list(folder.iterdir())  # it saw its mark, and removed it
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.asarray([x, x]))
    data_shards.check_shared_data_dir(str(folder))  # a shared folder passes
    with pytest.raises(ValueError, match=r"data_dir='gs://b/d': a URL; the data layer reads"):
        DataConfig(data_dir="gs://b/d")


def test_a_shard_with_no_records_is_one_line():
    """3 records over 4 shards: the empty shard, repeated, raised a bare StopIteration."""
    with pytest.raises(DataError, match=r"data shard 3 of 4 holds no records: the split has 3"):
        data_shards.shard_records([0, 1, 2], seed=0, shuffle=True, repeat=True, shard=3, shards=4)
