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

EXPERIMENTS = {
    "compare_attention": compare_attention.run,
    "exposure_bias": exposure_bias.run,
    "pet": pet.run,
    "theseus": theseus.run,
    "embedding_dim": embedding_dim.run,
    "gelu": gelu.run,
    "qagen": qagen.run,
    "recall": recall.run,
}
# Per experiment, the keys it sets for every point: fnmatch pattern -> what to use instead
# (research.main refuses a --config.KEY override of them; the sweep would drop it silently).
SWEPT = {
    name: getattr(module, "SWEPT", {})
    for name, module in {
        "compare_attention": compare_attention,
        "exposure_bias": exposure_bias,
        "pet": pet,
        "theseus": theseus,
        "embedding_dim": embedding_dim,
        "gelu": gelu,
        "qagen": qagen,
        "recall": recall,
    }.items()
}
