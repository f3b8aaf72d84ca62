"""Evaluation after training: judged win rate against the start model (or another run), with
bootstrap intervals and a length-controlled rate, answer lengths, and IFEval accuracy."""
