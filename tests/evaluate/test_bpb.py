"""Bits per byte: against an independent computation, windows, the command line."""

import json
import math

import pytest
import torch

from llamantino.cli import main
from llamantino.evaluate.bpb import compute_bpb, windows

DOCS = ["Il gatto dorme sul divano mentre la pioggia cade sulla città.",
        "Language models predict the next token; città, perché, così.",
        "Roma, Milano, Napoli e Torino sono città italiane."]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    m.eval()
    return m


def reference_bpb(model, tokenizer, texts):
    """Straightforward: one forward per document, full context, sum of -log p."""
    total_nll, total_bytes = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            total_nll += -logp.gather(-1, ids[0, 1:].unsqueeze(-1)).sum().item()
            total_bytes += len(text.encode("utf-8"))
    return total_nll / (math.log(2) * total_bytes)


def test_bpb_matches_an_independent_computation(model, tiny_tokenizer):
    result = compute_bpb(model, tiny_tokenizer, DOCS, max_length=256, stride=128, batch_size=2)
    assert result["bits_per_byte"] == pytest.approx(reference_bpb(model, tiny_tokenizer, DOCS), rel=1e-5)
    assert result["bytes"] == sum(len(d.encode("utf-8")) for d in DOCS)
    assert result["tokens"] == sum(len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) for d in DOCS)
    assert result["documents"] == 3 and result["stride"] == 128


@pytest.mark.parametrize("n,length,stride", [(2, 8, 4), (9, 8, 4), (30, 8, 3), (31, 10, 9), (100, 16, 1)])
def test_windows_score_every_token_once_with_enough_context(n, length, stride):
    scored = []
    for begin, end, first in windows(n, length, stride):
        assert end - begin <= length and begin < first <= end
        assert first - begin >= min(first, length - stride)  # context kept for the scored tokens
        scored += list(range(first, end))
    assert scored == list(range(1, n))


def test_long_documents_are_scored_in_windows(model, tiny_tokenizer):
    long_doc = " ".join(DOCS * 6)
    n = len(tiny_tokenizer(long_doc, add_special_tokens=False)["input_ids"]) + 1
    length, stride = 64, 32
    assert n > length
    result = compute_bpb(model, tiny_tokenizer, [long_doc], max_length=length, stride=stride)
    # Brute force: each token predicted from exactly the context its window gives it.
    ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(long_doc, add_special_tokens=False)["input_ids"]
    nll = 0.0
    with torch.no_grad():
        for begin, end, first in windows(len(ids), length, stride):
            for t in range(first, end):
                logits = model(torch.tensor([ids[begin:t]])).logits[0, -1].double()
                nll -= torch.log_softmax(logits, -1)[ids[t]].item()
    assert result["windows"] == len(list(windows(len(ids), length, stride))) > 1
    assert result["bits_per_byte"] == pytest.approx(nll / (math.log(2) * len(long_doc.encode())), rel=1e-5)
    # With a window covering the document, it is the plain full-context figure.
    full = compute_bpb(model, tiny_tokenizer, [long_doc], max_length=512, stride=256)
    assert full["bits_per_byte"] == pytest.approx(reference_bpb(model, tiny_tokenizer, [long_doc]), rel=1e-5)


def test_cli_reads_text_and_jsonl_and_writes_the_result(tmp_path, tiny_model_dir, model, tiny_tokenizer, capsys):
    txt = tmp_path / "docs.txt"
    txt.write_text("\n\n".join(DOCS[:2]) + "\n\n\n" + DOCS[2] + "\n", encoding="utf-8")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    out = tmp_path / "bpb.json"
    assert main(["eval", "bpb", "--model", str(tiny_model_dir), str(txt), "--output", str(out),
                 "--max-length", "128"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    for key in ("bits_per_byte", "tokens", "bytes", "documents", "stride"):
        assert printed[key] == saved[key]
    assert saved["documents"] == 3
    assert saved["bits_per_byte"] == pytest.approx(reference_bpb(model, tiny_tokenizer, DOCS), rel=1e-5)
    assert main(["eval", "bpb", "--model", str(tiny_model_dir), str(jsonl), "--max-length", "128"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_byte"] == pytest.approx(saved["bits_per_byte"], rel=1e-6)


def test_several_data_files_get_a_figure_each_and_together(tmp_path, tiny_model_dir, model, tiny_tokenizer,
                                                            capsys):
    it, en = tmp_path / "it.txt", tmp_path / "en.txt"
    it.write_text("\n\n".join(DOCS[:2]) + "\n", encoding="utf-8")
    en.write_text(DOCS[2] + "\n", encoding="utf-8")
    assert main(["eval", "bpb", "--model", str(tiny_model_dir), str(it), str(en), "--max-length", "128"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["by_data"]) == {"it.txt", "en.txt"}
    assert result["by_data"]["it.txt"]["bits_per_byte"] == pytest.approx(
        reference_bpb(model, tiny_tokenizer, DOCS[:2]), rel=1e-5)
    assert result["by_data"]["en.txt"]["bits_per_byte"] == pytest.approx(
        reference_bpb(model, tiny_tokenizer, DOCS[2:3]), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(reference_bpb(model, tiny_tokenizer, DOCS), rel=1e-5)
    assert result["documents"] == 3


def test_cli_errors(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    assert main(["eval", "bpb", "--model", str(tiny_model_dir), str(bad)]) == 2
    assert "bad.jsonl:2: missing field 'text'" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["eval", "bpb", "--model", str(tiny_model_dir), str(empty)]) == 2
    assert "no documents" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "Il gatto dorme."}\n')
    assert main(["eval", "bpb", "--model", str(tmp_path), str(good)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["eval", "bpb", "--model", str(tiny_model_dir), str(good), "--max-length", "4096"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err
