"""Text scores for every task that reports them (`text_scores`), and seq2seq's evaluation by
decoding: beam sizes `eval_beams` (1 = greedy), scored on the host, x100, as in the research
note's table (docs/research_notes.md section 1).

Units: one per CJK character (as the note scores Chinese titles: Rouge and sentence BLEU on
characters), one per word (lower-cased) or punctuation mark otherwise (`text_units`). Corpus BLEU
uses sacrebleu's own "zh" tokenisation: CJK characters one by one, other text as sacrebleu's
default 13a (so English and digit-string scores are the same as with 13a).
"""

import functools
import re

import jax
import numpy as np

from research.tasks.seq2seq.remedies import generate

# Han (with its compatibility block), Japanese kana and Hangul syllables: one unit a character
_CJK = "\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff"
_UNIT = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[^\s\w]")
ROUGE = ("rougeL", "rouge1", "rouge2")
SCORES = (*ROUGE, "bleu", "sentence_bleu")


def text_units(text: str) -> list[str]:
    """Scoring units: one per CJK character, one per word (lower-cased) or punctuation mark."""
    return _UNIT.findall(text.lower())


class _UnitTokenizer:  # rouge-score's tokenizer interface
    def tokenize(self, text):
        return text_units(text)


def text_scores(hyps: list[str], refs: list[str]) -> dict:
    """Scores of hypotheses against one reference each, all x100:

    rougeL, rouge1, rouge2: mean F1 over the pairs (rouge-score on `text_units`);
    bleu: corpus BLEU-4 (sacrebleu, tokenize="zh");
    sentence_bleu: the mean sentence BLEU-4 on `text_units` with Chen & Cherry's smoothing 1
    (nltk's SmoothingFunction().method1, epsilon 0.1: the note's reference evaluation).
    An empty hypothesis scores 0 on every sentence-level metric.
    """
    import sacrebleu
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_score import rouge_scorer

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    if not hyps:
        raise ValueError("text_scores needs at least one pair")
    scorer = rouge_scorer.RougeScorer(list(ROUGE), tokenizer=_UnitTokenizer())
    rouge = [scorer.score(r, h) for h, r in zip(hyps, refs, strict=True)]
    out = {name: 100 * float(np.mean([s[name].fmeasure for s in rouge])) for name in ROUGE}
    out["bleu"] = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
    smooth = SmoothingFunction().method1
    sentence = [
        sentence_bleu([text_units(r)], text_units(h), smoothing_function=smooth)
        if text_units(h)
        else 0.0
        for h, r in zip(hyps, refs, strict=True)
    ]
    out["sentence_bleu"] = 100 * float(np.mean(sentence))
    return out


def decode_metrics(cfg, vocab, eval_model, state, batches) -> dict:
    """cfg: Seq2seqConfig; vocab: `research.data.sources.Seq2seqVocab`; eval_model(params,
    consts) -> model; batches: (process-local numpy batch, the same as global arrays) pairs.
    Every process decodes its rows; the texts are gathered so all processes score the same.
    Keys beam{b}_{rougeL, rouge1, rouge2, bleu, sentence_bleu, exact} (`text_scores`)."""
    from jax.experimental import multihost_utils

    @functools.partial(jax.jit, static_argnames="beam")
    def run(params, consts, batch, beam):
        return generate(
            eval_model(params, consts),
            batch,
            layout=cfg.layout,
            method="beam",
            beam_size=beam,
            max_new=cfg.tgt_len,
            src_len=cfg.src_len,
            bos=vocab.bos,
            eos=vocab.eos,
            pad=vocab.pad,
        )

    def gather(x):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    hyps = {b: [] for b in cfg.eval_beams}
    refs = []
    for local, batch in batches:
        ref = gather(np.where(local["weights"] > 0, local["targets"], vocab.pad))
        refs += [vocab.decode(r) for r in ref]
        for b in cfg.eval_beams:
            hyps[b] += [
                vocab.decode(h) for h in gather(run(state.params, state.consts, batch, beam=b))
            ]
    result = {}
    for b in cfg.eval_beams:
        result.update({f"beam{b}_{k}": v for k, v in text_scores(hyps[b], refs).items()})
        exact = [h == r for h, r in zip(hyps[b], refs, strict=True)]
        result[f"beam{b}_exact"] = 100 * float(np.mean(exact))
    return result
