"""Training system: mesh and sharding rules, optimizer, steps, checkpoints, the loop.

`load_trained(workdir)` gives a finished (or running) run's model, vocabulary and config back.
"""

from research.train.trained import Trained, load_trained

__all__ = ["Trained", "load_trained"]
