"""Training system: mesh and sharding rules, optimizer, steps, checkpoints, the loop."""
