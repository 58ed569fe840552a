"""Metrics out, from process 0 only: DIR/metrics.jsonl (a JSON object a line) and TensorBoard."""

import json
import math
import pathlib

import jax


def summarize(sums: dict) -> dict:
    """Token-weighted sums -> loss, accuracy, perplexity (computed once, after all sums are in)."""
    weight = max(float(sums["weight_sum"]), 1.0)
    loss = float(sums["loss_sum"]) / weight
    out = {"loss": loss, "tokens": float(sums["weight_sum"])}
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / weight
    out["perplexity"] = math.exp(min(loss, 50.0))
    if "grad_norm" in sums:
        out["grad_norm"] = float(sums["grad_norm"])
    for k in sums.keys() - {"loss_sum", "weight_sum", "correct", "grad_norm"}:
        out[k] = float(sums[k])  # a task's own counts (mlm: "dropped"), summed over batches
    return out


class MetricWriter:
    def __init__(self, workdir):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.file = self.path.open("a")
        self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, split: str, values: dict):
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.file.flush()
        for k, v in values.items():
            self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self):
        if self.enabled:
            self.file.close()
            self.tb.close()
