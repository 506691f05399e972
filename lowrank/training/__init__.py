"""Training: fine-tuning a head, first-order pruning, mixed-rank fine-tuning and LPAF."""
