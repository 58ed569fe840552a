"""BERT-of-Theseus (Xu et al. 2020, "BERT-of-Theseus: Compressing BERT by Progressive Module
Replacing"; docs/research_notes.md section 5): compress a fine-tuned n-layer classifier to k layers.

The predecessor (an n-layer `Bert` with its pooler and classifier, fine-tuned on the task) is
frozen and cut into k modules of m = n / k consecutive layers. The successor has k layers; in
every training batch module i is replaced by successor layer i with probability p, independently
(r_i ~ Bernoulli(p)):

    h_0 = Embed(x);   h_{i+1} = r_i * S_i(h_i) + (1 - r_i) * P_{im+m-1}( ... P_{im}(h_i))

and the frozen head (final norm, pooler, classifier) reads h_k. Only the successor layers train;
the embeddings and head are the predecessor's, shared and frozen here (bert4keras' recipe), and
train again when the successor alone is fine-tuned (`Theseus.successor_model`). r = all ones is
exactly that successor; r = all zeros is exactly the predecessor.

The predecessor's weights are `Frozen` constants (`research.models.variables`): no gradient is
computed for them, the optimizer holds no moments for them and a checkpoint stores them once.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Int

from research.models.config import ModelConfig
from research.models.layers import Block
from research.models.params import transfer
from research.models.transformer import Bert, BertOutput
from research.models.variables import freeze


def check_successor_layers(num_layers: int, k: int, *, key: str = "successor_layers") -> None:
    """ValueError unless 1 <= k <= num_layers and k divides num_layers."""
    if not isinstance(k, int) or k < 1 or k > num_layers or num_layers % k:
        allowed = [d for d in range(1, num_layers + 1) if num_layers % d == 0]
        raise ValueError(
            f"{key}={k!r}: must divide the predecessor's {num_layers} layers (allowed: {allowed})"
        )


def replace_prob(step, *, p: float, schedule: str, slope: float):
    """The replacement probability at training `step`: p ("constant"), or the paper's linear
    curriculum min(1, p + slope * step) ("linear")."""
    if schedule == "constant":
        return jnp.float32(p)
    return jnp.minimum(1.0, p + slope * jnp.asarray(step, jnp.float32))


def draw_replacement(key, prob, k: int) -> Bool[Array, " k"]:
    """r_i ~ Bernoulli(prob) for the k modules, one draw per batch."""
    return jax.random.bernoulli(key, prob, (k,))


class Theseus(nnx.Module):
    """A frozen n-layer predecessor `Bert` (pooler + classifier) and k successor layers."""

    def __init__(self, cfg: ModelConfig, *, successor_layers: int, rngs: nnx.Rngs):
        if not cfg.num_labels:
            raise ValueError("Theseus compresses a classifier: the predecessor needs num_labels")
        check_successor_layers(cfg.num_layers, successor_layers)
        if cfg.scan_layers:
            raise ValueError("scan_layers=True: Theseus swaps single layers; build it unrolled")
        self.cfg = cfg
        self.k = successor_layers
        self.predecessor = Bert(cfg, rngs=rngs)
        freeze(self.predecessor)
        self.successor = nnx.List(
            [Block(cfg, causal=False, rngs=rngs) for _ in range(successor_layers)]
        )

    def __call__(
        self, tokens: Int[Array, "B L"], *, segment_ids=None, mask=None, replace=None
    ) -> BertOutput:
        """replace: [k] bool, True = module i runs successor layer i. A concrete value (numpy,
        a list, or None = all True: the successor) picks the layers in Python; a traced one
        (drawn inside jit) switches each module with `nnx.cond`, so only one branch runs."""
        pred = self.predecessor
        x, attn_mask, positions = pred.embed_inputs(tokens, segment_ids, mask)
        m = self.cfg.num_layers // self.k
        if replace is None:
            replace = np.ones(self.k, bool)

        def run_predecessor(model, x, i):
            for layer in model.predecessor.layers[i * m : (i + 1) * m]:
                x = layer(x, mask=attn_mask, positions=positions)
            return x

        def run_successor(model, x, i):
            return model.successor[i](x, mask=attn_mask, positions=positions)

        concrete = not isinstance(replace, jax.core.Tracer)
        for i in range(self.k):
            if concrete:
                branch = run_successor if bool(replace[i]) else run_predecessor
                x = branch(self, x, i)
            else:
                x = nnx.cond(
                    replace[i],
                    lambda mdl, h, i=i: run_successor(mdl, h, i),
                    lambda mdl, h, i=i: run_predecessor(mdl, h, i),
                    self,
                    x,
                )
        return pred.outputs(x)

    def successor_model(self, *, rngs: nnx.Rngs | None = None) -> Bert:
        """The k-layer `Bert` the successor is: the predecessor's embeddings and head and the
        successor's layers, as trainable `nnx.Param`s (stage 3 fine-tunes it)."""
        model = Bert(self.cfg.replace(num_layers=self.k), rngs=rngs or nnx.Rngs(0))
        transfer(self.predecessor, model)  # embeddings, final norm, pooler, classifier
        for mine, theirs in zip(model.layers, self.successor, strict=True):
            transfer(theirs, mine)
        return model
