"""Helpers shared by the experiments' tests."""

import pytest


def assert_only_process_0_writes(module, rerun, workdir, names, expected) -> None:
    """Another process of a multi-process run writes none of `names` (each one wrote every
    file): they are removed, then `rerun()` runs as process 1 and returns `expected`."""
    for name in names:
        (workdir / name).unlink()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(module.jax, "process_index", lambda: 1)
        assert rerun() == expected
    assert not any((workdir / name).exists() for name in names)
