"""Multi-task fine-tuning: heads, losses, PCGrad, optimizer, training loop and CLI."""
