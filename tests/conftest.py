import os

# Tests never log to wandb (the book's own runs log offline).
os.environ.setdefault("WANDB_MODE", "disabled")
