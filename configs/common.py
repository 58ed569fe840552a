"""The keys every single-run config shares, built from the typed dataclasses that declare and
document them (research.config: TrainConfig, OptimizerConfig, MeshConfig; research.data.config:
DataConfig; research.models.ModelConfig), so each default is written once."""

from ml_collections import ConfigDict

from research.config import defaults


def base_config() -> ConfigDict:
    c = defaults()
    c.model.positions = "rotary"  # every experiment here uses rotary positions
    return c
