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
