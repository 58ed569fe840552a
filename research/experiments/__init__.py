"""Experiments that run several training runs and compare them: config.experiment names one."""

from research.experiments import (
    compare_attention,
    embedding_dim,
    exposure_bias,
    gelu,
    pet,
    qagen,
    recall,
    theseus,
)

_MODULES = {
    "compare_attention": compare_attention,
    "exposure_bias": exposure_bias,
    "pet": pet,
    "theseus": theseus,
    "embedding_dim": embedding_dim,
    "gelu": gelu,
    "qagen": qagen,
    "recall": recall,
}
EXPERIMENTS = {name: module.run for name, module in _MODULES.items()}
# Per experiment, the keys it sets for every point: fnmatch pattern -> what to use instead
# (research.main refuses a --config.KEY override of them; the sweep would drop it silently).
SWEPT = {name: getattr(module, "SWEPT", {}) for name, module in _MODULES.items()}
