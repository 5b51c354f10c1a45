"""`llamantino vocab extend`: new BPE entries learnt on Italian text, ids kept, text round-trips,
old embedding rows bit-identical, new rows the mean of their old pieces' rows."""

import io
import json
import random
import shutil
from pathlib import Path

import pytest

from llamantino.core.errors import LlamantinoError

from helpers.vocab import DEMO, EN_HELDOUT, IT_HELDOUT, IT_TRAIN, extend


def paragraphs(path) -> list[str]:
    from llamantino.data.vocab import read_documents

    return list(read_documents([str(path)]))


def state_dict(folder):
    from safetensors.torch import load_file

    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(path))
    return out


def tokenizer_json(folder) -> dict:
    return json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# The learner against a plain BPE written from its definition


def reference_merges(words: list[tuple[list[str], int]], n, min_frequency, taken, frozen):
    """Recount every pair at every step; merge the most frequent (ties: smallest pair)."""
    from collections import Counter

    words = [(list(w), f) for w, f in words]
    taken = set(taken)
    merges = []
    while len(merges) < n:
        counts = Counter()
        for word, freq in words:
            for pair in zip(word, word[1:]):
                counts[pair] += freq
        candidates = [(-c, p) for p, c in counts.items()
                      if c >= min_frequency and p[0] not in frozen and p[1] not in frozen and p[0] + p[1] not in taken]
        if not candidates:
            break
        _, (a, b) = min(candidates)
        merges.append((a, b))
        taken.add(a + b)
        for k, (word, freq) in enumerate(words):
            out, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and word[j] == a and word[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            words[k] = (out, freq)
    return merges, [w for w, _ in words]


def test_learner_matches_plain_bpe_recounting_every_step():
    from llamantino.data.vocab import learn_merges

    rng = random.Random(3)
    letters = "aabbcdeilnorst"
    words = [(list("".join(rng.choice(letters) for _ in range(rng.randint(1, 9)))), rng.randint(1, 6))
             for _ in range(400)]
    words += [(["a", "a", "a", "a", "a"], 7)]  # overlapping pairs merge left to right
    taken, frozen = {"ab", "st"}, {"d"}
    merges, after = learn_merges(words, n=150, min_frequency=3, taken=taken, frozen=frozen)
    expected, expected_words = reference_merges(words, 150, 3, taken, frozen)
    assert merges == expected
    assert after == expected_words
    assert ("a", "b") not in merges and all("d" not in pair for pair in merges)
    assert len(merges) == 150


def test_learner_stops_when_no_pair_is_frequent_enough():
    from llamantino.data.vocab import learn_merges

    merges, _ = learn_merges([(list("abc"), 2), (list("xy"), 1)], n=10, min_frequency=2, taken=set(), frozen=set())
    assert merges == [("a", "b"), ("ab", "c")]


def test_tokenizer_families_from_tokenizer_json():
    from llamantino.data.vocab import BYTE_LEVEL, SENTENCEPIECE, tokenizer_family

    bpe = {"type": "BPE", "vocab": {}, "merges": []}
    llama3 = {"model": bpe, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "x"}}, {"type": "ByteLevel", "add_prefix_space": False}]}}
    llama2_legacy = {"model": {**bpe, "byte_fallback": True}, "pre_tokenizer": None, "normalizer": {
        "type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}}
    mistral = {"model": bpe, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}
    assert tokenizer_family(llama3, "t") == BYTE_LEVEL
    assert tokenizer_family(llama2_legacy, "t") == tokenizer_family(mistral, "t") == SENTENCEPIECE
    with pytest.raises(LlamantinoError, match="tokenizer type BPE with pre-tokenizer Whitespace is not supported"):
        tokenizer_family({"model": bpe, "pre_tokenizer": {"type": "Whitespace"}}, "t")
    with pytest.raises(LlamantinoError, match="tokenizer type WordLevel is not supported"):
        tokenizer_family({"model": {"type": "WordLevel", "vocab": {}}}, "t")


# ---------------------------------------------------------------------------------------
# Byte-level BPE (the demo's tokenizer family)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("vocab") / "extended"
    result, report = extend(tiny_model_dir, out, add_tokens=300)
    return tiny_model_dir, out, result, report


def test_byte_level_tokens_are_bpe_entries_with_old_ids_kept(byte_level):
    from transformers import AutoTokenizer

    base, out, _, report = byte_level
    old, new = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(out)
    assert len(old) == 512 and len(new) == 812
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[token] == i for token, i in old_vocab.items())
    new_tokens = [t["token"] for t in report["new_tokens"]]
    assert [new_vocab[t] for t in new_tokens] == list(range(512, 812))
    # Real entries of the BPE model, not added tokens; merges appended after the old ones.
    before, after = tokenizer_json(base), tokenizer_json(out)
    assert after["added_tokens"] == before["added_tokens"]
    assert all(after["model"]["vocab"][t] == 512 + k for k, t in enumerate(new_tokens))
    old_merges = before["model"]["merges"]
    assert after["model"]["merges"][: len(old_merges)] == old_merges
    assert ["".join(m) for m in after["model"]["merges"][len(old_merges):]] == new_tokens
    # Pinned: the first tokens learnt from the bundled Italian text.
    assert [t["text"] for t in report["new_tokens"][:6]] == ["at", " i", " de", "ra", " in", " d"]


def test_byte_level_round_trip_and_fewer_tokens_on_italian(byte_level):
    from transformers import AutoTokenizer

    _, out, result, report = byte_level
    new = AutoTokenizer.from_pretrained(out)
    texts = paragraphs(IT_HELDOUT) + paragraphs(EN_HELDOUT)
    texts.append("Perché è così? Città, virtù e caffè — 3,14 € «citazione» ☕ naïve\tTAB  due spazi\n")
    for text in texts:
        assert new.decode(new(text, add_special_tokens=False)["input_ids"]) == text
    it = report["eval"]["it"]
    assert it["documents"] == 24 and it["after"]["round_trip_exact"] == it["documents"]
    assert it["after"]["tokens_per_word"] < 0.8 * it["before"]["tokens_per_word"]
    # Pinned figures on the bundled held-out text.
    assert (it["before"]["tokens_per_word"], it["after"]["tokens_per_word"]) == (4.0053, 2.6067)
    assert it["new_tokens_used"] > 100 and report["new_tokens_used"] >= it["new_tokens_used"]
    assert report["eval"]["en"]["new_tokens_used"] < it["new_tokens_used"]
    assert result["headline"]["tokens_added"] == 300
    # The learner's tokenization of the corpus is the saved tokenizer's, token for token.
    corpus = paragraphs(IT_TRAIN)
    tokens = sum(len(ids) for ids in new(corpus, add_special_tokens=False)["input_ids"])
    assert report["corpus"]["tokens_after_learnt"] == tokens


def test_byte_level_embeddings_old_rows_kept_new_rows_mean_of_pieces(byte_level):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, out, _, report = byte_level
    old_tok, new_tok = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 812 and model.dtype == torch.float32
    before, after = state_dict(base), state_dict(out)
    assert set(before) == set(after)
    for name, old in before.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert after[name].shape == (812, old.shape[1])
            assert torch.equal(after[name][:512], old), name
        else:
            assert torch.equal(after[name], old), name
    # Independent computation: decode the new token, encode that text with the old tokenizer.
    for new_id in range(512, 812):
        text = new_tok.decode([new_id])
        pieces = old_tok(text, add_special_tokens=False)["input_ids"]
        assert len(pieces) >= 2
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            expected = before[name][pieces].mean(dim=0)
            torch.testing.assert_close(after[name][new_id], expected, rtol=1e-6, atol=1e-7)
    assert not torch.equal(after["lm_head.weight"][512:], after["model.embed_tokens.weight"][512:])
    assert report["tied_embeddings"] is False


def test_byte_level_rerun_is_skipped(byte_level):
    base, out, _, _ = byte_level
    result, _ = extend(base, out, add_tokens=300)
    assert result["status"] == "skipped (done)"


# ---------------------------------------------------------------------------------------
# SentencePiece-style BPE (LLaMA 2 / Mistral), with tokenizer.model and tied embeddings


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A SentencePiece BPE model with byte fallback, trained on English lines, loaded as a
    LLaMA 2 tokenizer; a tiny LLaMA with tied embeddings; both saved with tokenizer.model."""
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    lines = [line for line in (DEMO / "en_train.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=proto, model_type="bpe",
                                   vocab_size=700, byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    root = tmp_path_factory.mktemp("sp")
    (root / "spm").mkdir()
    (root / "spm" / "tokenizer.model").write_bytes(proto.getvalue())
    (root / "spm" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tokenizer = AutoTokenizer.from_pretrained(root / "spm")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    base = root / "base"
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    shutil.copy(root / "spm" / "tokenizer.model", base / "tokenizer.model")
    corpus = root / "it_train.jsonl"  # JSON lines with the text under another field
    corpus.write_text("".join(json.dumps({"body": text}) + "\n" for text in paragraphs(IT_TRAIN)), encoding="utf-8")
    out = root / "extended"
    _, report = extend(base, out, add_tokens=200, data=[str(corpus)], text_field="body")
    return base, out, report


def test_sentencepiece_family_extended_and_tokenizer_model_agrees(sentencepiece_model):
    import sentencepiece as spm
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import generate_merges

    base, out, report = sentencepiece_model
    assert report["tokenizer_family"] == "SentencePiece-style BPE" and report["sentencepiece_model"] == "updated"
    old, new = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(out)
    assert type(new).__name__ == "LlamaTokenizer" and len(new) == 900
    assert all(new.get_vocab()[t] == i for t, i in old.get_vocab().items())
    processor = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert processor.get_piece_size() == 900
    assert [processor.id_to_piece(700 + k) for k in range(200)] == [t["token"] for t in report["new_tokens"]]
    texts = paragraphs(IT_HELDOUT) + paragraphs(EN_HELDOUT) + paragraphs(IT_TRAIN)[:40]
    for text in texts:
        ids = new(text, add_special_tokens=False)["input_ids"]
        assert processor.encode(text) == ids
        assert new.decode(ids) == text
    # The merges are those transformers derives from the updated SentencePiece model.
    model = tokenizer_json(out)["model"]
    merges = [tuple(m) for m in model["merges"]]
    assert set(merges) == set(generate_merges(model["vocab"]))
    ranks = [model["vocab"][a + b] for a, b in merges]
    assert ranks == sorted(ranks)
    it = report["eval"]["it"]
    assert it["after"]["tokens_per_word"] < 0.8 * it["before"]["tokens_per_word"] and it["new_tokens_used"] > 50


def test_sentencepiece_tied_embeddings_grow_as_one_matrix(sentencepiece_model):
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM

    base, out, report = sentencepiece_model
    before, after = state_dict(base), state_dict(out)
    assert "lm_head.weight" not in after and report["tied_embeddings"] is True
    old, new = before["model.embed_tokens.weight"], after["model.embed_tokens.weight"]
    assert new.shape[0] == 900 and torch.equal(new[:700], old)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # Independent computation with the old SentencePiece model, for word-initial tokens.
    processor = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    checked = 0
    for entry in report["new_tokens"]:
        if entry["token"].startswith("▁") and len(entry["token"]) > 1:
            pieces = processor.encode(entry["token"][1:])
            torch.testing.assert_close(new[entry["id"]], old[pieces].mean(dim=0), rtol=1e-6, atol=1e-7)
            checked += 1
    assert checked > 50


# ---------------------------------------------------------------------------------------
# Reserved special tokens after the vocabulary, padded matrices, dtype


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.fixture(scope="module")
def reserved_model(tmp_path_factory, tiny_tokenizer):
    """Llama 3's shape in small: its pre-tokenizer (regex split, then bytes) and ignore_merges,
    special tokens reserved after the BPE vocabulary, and (like Qwen) an embedding matrix
    padded beyond the tokenizer; bfloat16 weights."""
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from llamantino.demo.demo_base import build_model

    state = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    state["model"]["ignore_merges"] = True
    state["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)), bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": [f"<|reserved_{i}|>" for i in range(4)]})
    assert tokenizer.convert_tokens_to_ids("<|reserved_3|>") == 515
    model = build_model(tokenizer, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                        max_position_embeddings=128)
    model.resize_token_embeddings(576, mean_resizing=False)
    folder = tmp_path_factory.mktemp("reserved") / "base"
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_new_ids_follow_reserved_tokens_and_use_spare_rows(reserved_model, tmp_path):
    import torch
    from transformers import AutoTokenizer

    out = tmp_path / "extended"
    _, report = extend(reserved_model, out, add_tokens=50)
    new = AutoTokenizer.from_pretrained(out)
    assert report["first_new_id"] == 516 and len(new) == 566
    assert new("<|reserved_2|>", add_special_tokens=False)["input_ids"] == [514]
    assert report["eval"]["it"]["after"]["round_trip_exact"] == report["eval"]["it"]["documents"]
    assert report["eval"]["it"]["new_tokens_used"] > 20
    assert report["embedding_rows_before"] == report["embedding_rows_after"] == 576
    before, after = state_dict(reserved_model), state_dict(out)
    # Each new token starts as the mean of the rows of the pieces the old tokenizer cuts its
    # text into: derived here from the old tokenizer itself, not from what the report says.
    old = AutoTokenizer.from_pretrained(reserved_model)
    pieces = {}
    for token_id in range(516, 566):
        text = new.decode([token_id])
        pieces[token_id] = old(text, add_special_tokens=False)["input_ids"]
        assert len(pieces[token_id]) > 1 and new(text, add_special_tokens=False)["input_ids"] == [token_id], text
    assert {e["id"]: e["init_from"] for e in report["new_tokens"]} == pieces
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert after[name].dtype == torch.bfloat16 and after[name].shape[0] == 576
        assert torch.equal(after[name][:516], before[name][:516])
        assert torch.equal(after[name][566:], before[name][566:])  # spare rows not needed stay as they were
        for token_id, ids in pieces.items():
            expected = before[name][ids].float().mean(dim=0).to(torch.bfloat16)
            assert torch.equal(after[name][token_id], expected), (name, token_id)


def test_pad_to_multiple_of_rounds_the_matrix_up(reserved_model, tmp_path):
    import torch
    from transformers import AutoConfig

    out = tmp_path / "extended"
    _, report = extend(reserved_model, out, add_tokens=100, pad_to_multiple_of=64, max_documents=40)
    assert report["corpus"]["documents"] == 40
    assert report["embedding_rows_after"] == 640 and AutoConfig.from_pretrained(out).vocab_size == 640
    before, after = state_dict(reserved_model), state_dict(out)
    weight = after["model.embed_tokens.weight"]
    assert torch.equal(weight[:516], before["model.embed_tokens.weight"][:516])
    spare = before["model.embed_tokens.weight"][:516].float().mean(dim=0).to(torch.bfloat16)
    assert all(torch.equal(weight[row], spare) for row in range(616, 640))


# ---------------------------------------------------------------------------------------
# Bad input: one line, nothing written


def test_more_tokens_than_the_corpus_supports(tiny_model_dir, tmp_path, capsys):
    from llamantino import cli

    corpus = tmp_path / "small.txt"
    corpus.write_text("Il gatto dorme sul divano.\n\nLa gatta dorme sul divano.\n", encoding="utf-8")
    out = tmp_path / "out"
    code = cli.main(["vocab", "extend", "--model", str(tiny_model_dir), "--data", str(corpus),
                     "--add-tokens", "500", "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "supports only" in err and "asked for 500" in err
    supported = int(err.split("supports only ")[1].split()[0])
    assert 0 < supported < 20
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("kind", ["WordPiece", "Unigram"])
def test_unsupported_tokenizer_types_are_named(tiny_model_dir, tmp_path, kind):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = ["il gatto dorme sul divano", "la gatta dorme sul tappeto"] * 5
    if kind == "WordPiece":
        backend = Tokenizer(models.WordPiece(unk_token="<unk>"))
        trainer = trainers.WordPieceTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
    else:
        backend = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=40, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>")
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(text, trainer)
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
    with pytest.raises(LlamantinoError, match=f"tokenizer type {kind} is not supported"):
        extend(folder, tmp_path / "out", add_tokens=5)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", '{"text": ""}\n{"text": "   "}\n'])
def test_a_source_that_yields_nothing(tiny_model_dir, tmp_path, content):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text(content, encoding="utf-8")
    with pytest.raises(LlamantinoError, match="no documents|yields no text"):
        extend(tiny_model_dir, tmp_path / "out", data=[str(corpus)], add_tokens=5)
    assert not (tmp_path / "out").exists()


def test_eval_data_needs_a_name(tiny_model_dir, tmp_path):
    with pytest.raises(LlamantinoError, match="expected NAME=PATH"):
        extend(tiny_model_dir, tmp_path / "out", eval_data=[str(IT_HELDOUT)])


def test_a_tokenizer_larger_than_the_embedding_matrix(tiny_model_dir, reserved_model, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")  # 512 rows
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(reserved_model / name, folder / name)  # ids up to 515
    with pytest.raises(LlamantinoError, match="has 512 embedding rows but its tokenizer uses ids up to 515"):
        extend(folder, tmp_path / "out", add_tokens=5)
