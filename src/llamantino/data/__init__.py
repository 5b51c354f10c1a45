"""Corpora and records: formats, streaming, shards, cleaning, translation, prompts, tokenised
examples, packing, vocabulary."""
