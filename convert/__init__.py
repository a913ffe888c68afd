"""Checkpoint import and export between PyTorch BERT state dicts and Flax parameter trees."""
