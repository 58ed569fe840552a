"""Next-token language modelling with a `DecoderLM` on text (data.source: stdlib_code, tfds,
text:PATH, jsonl:PATH), tokenized by a sentencepiece model trained on the train split."""

import jax
import jax.numpy as jnp

from research import ops
from research.config import ConfigError, RunConfig
from research.data import sources, tokenizer
from research.data.lm import lm_iterator
from research.models import DecoderLM
from research.sampling import TextPrompt
from research.tasks.base import Task, TaskData


def lm_loss(model, batch: dict, *, key=None, step=None):
    """Next-token LM. batch: inputs, targets [B, L] int, weights [B, L] float (0 = padding),
    optional segment_ids [B, L] (speaker segments) and document_ids [B, L] (packed documents,
    `research.data.lm`). Metrics: correct (weighted count of argmax hits)."""
    logits = model(
        batch["inputs"],
        segment_ids=batch.get("segment_ids"),
        document_ids=batch.get("document_ids"),
    )
    loss_sum, weight_sum = ops.cross_entropy(logits, batch["targets"], mask=batch["weights"])
    hits = (jnp.argmax(logits, axis=-1) == batch["targets"]) * batch["weights"]
    return loss_sum, weight_sum, {"correct": jnp.sum(hits)}


class LmTask(Task):
    name = "lm"
    packs_documents = True

    def build_data(self, run: RunConfig) -> TaskData:
        train_source, eval_source, tok = sources.text_sources(run.data)
        t, d = run.train, run.data

        def make(train: bool):
            return lm_iterator(
                train_source if train else eval_source,
                tok,
                seq_len=d.seq_len,
                batch_size=t.batch_size,
                seed=t.seed,
                train=train,
                shards=d.shards,
                documents=d.document_boundaries,
            )

        return TaskData(tok.vocab_size(), d.seq_len, make, tokenizer.SentencePieceVocab(tok))

    def validate(self, run: RunConfig) -> None:
        super().validate(run)
        m = run.model  # jax.nn.dot_product_attention (cudnn) takes no segment ids
        cudnn = m.attention == "softmax" and m.softmax_implementation == "cudnn"
        if run.data.document_boundaries and cudnn:
            raise ConfigError(
                "model.softmax_implementation='cudnn' cannot separate packed documents "
                "(data.document_boundaries=True); use 'blockwise' (O(L) memory), 'xla', or "
                "'tpu_flash' on TPU, or data.document_boundaries=False"
            )

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict:
        """Next-token rows, with document_ids [B, seq_len] int32 when data.document_boundaries."""
        batch = super().abstract_batch(run, batch_size)
        if run.data.document_boundaries:
            shape = (batch_size, run.data.seq_len)
            batch["document_ids"] = jax.ShapeDtypeStruct(shape, jnp.int32)
        return batch

    def model_class(self, run: RunConfig) -> type:
        return DecoderLM

    def text_prompt(self, run: RunConfig, vocab, text: str) -> TextPrompt:
        """`text` as research.generate continues it: its tokens, until EOS."""
        return TextPrompt(vocab.encode(text), vocab, None, vocab.eos_id, vocab.pad_id)

    def loss_fn(self, run: RunConfig, data: TaskData):
        return lm_loss
