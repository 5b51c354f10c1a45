"""The adaptation tests' corpus and command line, for the tests that train on top of them."""

import json
from pathlib import Path

DOCS = [
    "Il gatto dorme sul divano mentre la pioggia cade sulla città.",
    "Domani andremo al mare con gli amici di Napoli e di Roma.",
    "Language models predict the next token.",
    "Roma, Milano, Napoli e Torino sono città italiane.",
]


def write_jsonl(path: Path, texts):
    path.write_text("".join(json.dumps({"text": t, "url": f"https://x.it/{i}", "timestamp": "2020"}) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


def corpus(tmp_path, n=60):
    texts = [f"{DOCS[i % len(DOCS)]} Documento numero {i}, con qualche parola in più." for i in range(n)]
    return write_jsonl(tmp_path / "corpus.jsonl", texts)


def adapt_args(model_dir, data, out, *extra):
    return ["adapt", "--model", str(model_dir), "--data", str(data), "--output", str(out), "--max-length", "64",
            "--batch-size", "2", "--max-steps", "6", "--save-steps", "3", "--logging-steps", "1",
            "--warmup-ratio", "0.2", "--learning-rate", "1e-3", *extra]
