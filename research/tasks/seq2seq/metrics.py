"""Evaluation by decoding: beam sizes `eval_beams` (1 = greedy), scored on the host with
rouge-score (rougeL/1/2 F1) and sacrebleu (corpus BLEU), x100, as in the research note's table."""

import functools

import jax
import numpy as np

from research.tasks.seq2seq.remedies import generate


def decode_metrics(cfg, vocab, eval_model, state, batches) -> dict:
    """cfg: Seq2seqConfig; vocab: `research.data.sources.Seq2seqVocab`; eval_model(params,
    consts) -> model; batches: (process-local numpy batch, the same as global arrays) pairs.
    Every process decodes its rows; the texts are gathered so all processes score the same."""
    import sacrebleu
    from jax.experimental import multihost_utils
    from rouge_score import rouge_scorer

    @functools.partial(jax.jit, static_argnames="beam")
    def run(params, consts, batch, beam):
        return generate(eval_model(params, consts), batch, layout=cfg.layout, method="beam",
                        beam_size=beam, max_new=cfg.tgt_len, src_len=cfg.src_len, bos=vocab.bos,
                        eos=vocab.eos, pad=vocab.pad)  # fmt: skip

    def gather(x):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    hyps = {b: [] for b in cfg.eval_beams}
    refs = []
    for local, batch in batches:
        ref = gather(np.where(local["weights"] > 0, local["targets"], vocab.pad))
        refs += [vocab.detokenize(r) for r in ref]
        for b in cfg.eval_beams:
            hyps[b] += [vocab.detokenize(h) for h in gather(run(state.params, state.consts,
                                                                batch, beam=b))]  # fmt: skip
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1", "rouge2"])
    tokenize = "none" if vocab.tok is None else "13a"
    result = {}
    for b in cfg.eval_beams:
        pairs = list(zip(refs, hyps[b], strict=True))
        scores = [scorer.score(r, h) for r, h in pairs]
        for name in ("rougeL", "rouge1", "rouge2"):
            result[f"beam{b}_{name}"] = 100 * float(np.mean([x[name].fmeasure for x in scores]))
        result[f"beam{b}_bleu"] = sacrebleu.corpus_bleu(hyps[b], [refs], tokenize=tokenize).score
        result[f"beam{b}_exact"] = 100 * float(np.mean([h == r for r, h in pairs]))
    return result
