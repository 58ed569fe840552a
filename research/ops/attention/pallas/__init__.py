"""Pallas TPU (Mosaic) kernels for the chunked linear-attention forms, forward and backward:
driver.py (grid, VMEM state, custom VJP, interpreter off TPU), gla.py (plain linear attention
and GLA), delta.py (DeltaNet and Gated DeltaNet). Selected with implementation="pallas" on
`linear_attention`, `gated_linear_attention` and `delta_rule_attention`."""

IMPLEMENTATIONS = ("xla", "pallas")
