"""A fixture's expensive product (a trained smoke model, a smoke study) made once per test session.

Under pytest-xdist a module's tests are spread over the workers, so a module- or session-scoped
fixture would be built once per worker: the same minute of training twice. `once` builds it in
the session's shared temporary directory under a file lock: the first worker to ask builds it,
the others wait and read it. Its consumers only read the directory.
"""

import json
import os
import pathlib
import shutil
from collections.abc import Callable

import pytest
from filelock import FileLock


def once(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    build: Callable[[pathlib.Path], object],
) -> tuple[pathlib.Path, object]:
    """(directory, value): `build(directory)` fills an empty directory and returns a JSON value.

    Every worker of the session gets the same directory and value. A build that raises leaves no
    result, so the next worker to ask builds again (and fails the same way)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory; each worker's basetemp is inside it
    path, result = base / f"once-{name}", base / f"once-{name}.json"
    with FileLock(f"{path}.lock"):
        if not result.is_file():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            value = json.dumps(build(path))
            result.write_text(value)
    return path, json.loads(result.read_text())
