"""Evaluation: bits per byte, chat, EVALITA 2023 (evalita/), lm-evaluation-harness, runs compared
side by side."""
