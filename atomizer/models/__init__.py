"""Models: shared layers, the Atomizer, the canvas baselines, adapters, the registry and checkpoints.
Every model is called as ``model(batch)`` on its ``input_type``."""
