"""Training entry points for the small models this project trains on its offline corpus.

One module per model, each a short script-like file (nanoGPT style): settings in a config
dataclass, then data, model, loop, checkpoint. Checkpoints are fp16 safetensors of a few MB,
committed with their training log and the command that made them.
"""
