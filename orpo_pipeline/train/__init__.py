"""ORPO training: config, tokenization, loss, loop and evaluation."""
