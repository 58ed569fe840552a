"""seqlab: JAX/Flax research code for sequence models."""
