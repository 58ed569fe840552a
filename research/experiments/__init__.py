"""Experiments that run several training runs and compare them: config.experiment names one."""

from research.experiments import compare_attention, exposure_bias, pet, theseus

EXPERIMENTS = {"compare_attention": compare_attention.run, "exposure_bias": exposure_bias.run,
               "pet": pet.run, "theseus": theseus.run}  # fmt: skip
