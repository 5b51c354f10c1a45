"""Shared fixtures: a tiny LLaMA and its tokenizer, built offline and saved to disk once
per test session, so tests exercise the real `from_pretrained` loading code."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog. A small model learns from a little text.",
    "Il gatto dorme sul divano mentre la pioggia cade sulla città. Domani andremo al mare.",
    "Language models predict the next token. I modelli linguistici predicono la parola successiva.",
    "Roma, Milano, Napoli e Torino sono città italiane. London and Paris are European capitals.",
    "Sei un assistente disponibile, rispettoso e onesto. Rispondi sempre nel modo più utile possibile.",
    "### Istruzione: scrivi una risposta. ### Input: un testo. ### Risposta: ecco la risposta.",
    "[INST] <<SYS>> system <</SYS>> user question [/INST] assistant answer",
    "def main(): return 0  # code, numbers 0 1 2 3 4 5 6 7 8 9, email@example.com https://example.org",
] * 4


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from llamantino.demo_base import build_tokenizer

    return build_tokenizer(TOKENIZER_TEXT, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A random 2-layer LLaMA (hidden 64) saved with save_pretrained, with its tokenizer."""
    from llamantino.demo_base import build_model

    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_model(tiny_tokenizer, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        max_position_embeddings=512, seed=0)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
