"""Pallas TPU (Mosaic) kernels for the chunked linear-attention forms, forward and backward:
driver.py (grid, VMEM state, custom VJP, interpreter off TPU), gla.py (plain linear attention
and GLA), delta.py (DeltaNet and Gated DeltaNet). Selected with implementation="pallas" on
`linear_attention`, `gated_linear_attention` and `delta_rule_attention`."""

IMPLEMENTATIONS = ("xla", "pallas")


def check_implementation(implementation: str, form: str) -> None:
    """`implementation` one of IMPLEMENTATIONS; "pallas" is a kernel of the chunked form."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation={implementation!r} is not allowed; choose one of "
            f"{', '.join(IMPLEMENTATIONS)}"
        )
    if implementation == "pallas" and form != "chunked":
        raise ValueError(
            f"implementation='pallas' is a kernel of form='chunked'; got form={form!r} "
            "(use implementation='xla' for the other forms)"
        )
