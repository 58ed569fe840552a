"""Flax NNX models composed from `research.ops`."""

from research.models import stack
from research.models.config import ModelConfig
from research.models.transformer import Bert, BertOutput, DecoderLM, EncoderDecoder

__all__ = ["Bert", "BertOutput", "DecoderLM", "EncoderDecoder", "ModelConfig", "stack"]
