"""Experiments that run several training runs and compare them: config.experiment names one."""

from research.experiments import compare_attention

EXPERIMENTS = {"compare_attention": compare_attention.run}
