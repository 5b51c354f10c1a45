"""`llamantino export gguf`: every family's file read back by transformers (through
models/gguf_files.py, which completes the config from llama.cpp's metadata) gives the source's
logits and token ids; Q8_0 keeps greedy choices and bits per byte; an adapter merged on export
equals exporting the merged model; bad inputs give one line and leave nothing behind."""

import errno
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from helpers.families import FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")

DEMO = Path(__file__).resolve().parents[2] / "src" / "llamantino" / "assets" / "demo"


def italian_sentences(n: int = 200, longest: int = 110) -> list[str]:
    """`n` short Italian sentences with accented letters or apostrophes, from the demo's texts."""
    text = (DEMO / "it_heldout.txt").read_text(encoding="utf-8") + "\n" + (DEMO / "it_train.txt").read_text(
        encoding="utf-8")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    chosen = [s for s in sentences if 20 <= len(s) <= longest and re.search(r"[àèéìòù']", s)]
    assert len(chosen) >= n
    return chosen[:n]


SENTENCES = italian_sentences()


def logits_of(model, tokenizer, texts, batch: int = 50):
    """Logits of every real (not padded) position, batched with right padding."""
    import torch

    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start:start + batch], return_tensors="pt", padding=True)
            logits = model(**enc).logits
            out.append(logits[enc["attention_mask"].bool()])
    return torch.cat(out)


def source_model(folder):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def spm_model(folder: Path) -> Path:
    """A tiny LLaMA 2-style model: SentencePiece BPE tokenizer (byte fallback, tokenizer.model
    next to tokenizer.json) trained here, offline."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    from llamantino.demo.demo_base import build_model

    buf = io.BytesIO()
    lines = (DEMO / "it_train.txt").read_text(encoding="utf-8").splitlines()[:300]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
                                   vocab_size=400, byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    raw = folder / "raw"
    raw.mkdir(parents=True)
    (raw / "tokenizer.model").write_bytes(buf.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(raw)
    model_dir = folder / "model"
    tokenizer.save_pretrained(model_dir)
    shutil.copyfile(raw / "tokenizer.model", model_dir / "tokenizer.model")  # as LLaMA 2 checkpoints ship it
    build_model(tokenizer, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                max_position_embeddings=512, seed=0).save_pretrained(model_dir)
    return model_dir


def trained_model(source: Path, folder: Path) -> Path:
    """The tiny LLaMA trained briefly on the demo's Italian text: a random model's next-token
    choices hang on margins far below any quantisation step, a trained one's do not."""
    from transformers import AutoTokenizer

    from llamantino.demo.demo_base import read_paragraphs, train_lm

    model, tokenizer = source_model(source), AutoTokenizer.from_pretrained(source)
    train_lm(model, tokenizer, read_paragraphs([DEMO / "it_train.txt"]), seq_length=64, batch_size=8, steps=80,
             learning_rate=3e-3, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def moe_model(model_type: str, folder: Path) -> Path:
    """A tiny mixture of experts (4 experts, 2 per token) with the Qwen 3 or the Mistral tokenizer
    of tests/helpers/families.py; saved per expert, as transformers writes checkpoints."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from helpers.families import SIZES, build_tokenizer

    family, extra = {"qwen3_moe": ("qwen3", dict(num_experts=4, moe_intermediate_size=32, head_dim=8,
                                                  norm_topk_prob=True)),
                     "mixtral": ("mistral", dict(num_local_experts=4, sliding_window=None))}[model_type]
    tokenizer = build_tokenizer(FAMILIES[family])
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **SIZES, num_key_value_heads=2,
                                  num_experts_per_tok=2, **extra)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sources(tmp_path_factory, family_dirs, tiny_model_dir):
    """Model folder by name: the seven families, the demo-style LLaMA (byte-level BPE), a
    SentencePiece LLaMA. Mistral without its sliding window: llama.cpp runs Mistral as `llama`,
    over the whole context, and so does the file."""
    built = {}

    def get(name):
        if name not in built:
            if name == "demo":
                built[name] = tiny_model_dir
            elif name == "trained":
                built[name] = trained_model(tiny_model_dir, tmp_path_factory.mktemp("trained"))
            elif name == "spm":
                built[name] = spm_model(tmp_path_factory.mktemp("spm"))
            elif name in ("qwen3_moe", "mixtral"):
                built[name] = moe_model(name, tmp_path_factory.mktemp(name))
            elif name == "linear-rope":  # a LLaMA with linear RoPE scaling (factor 2)
                folder = tmp_path_factory.mktemp("linear-rope")
                shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
                config = json.loads((folder / "config.json").read_text())
                config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0,
                                             "rope_theta": config.get("rope_theta", 10000.0)}
                (folder / "config.json").write_text(json.dumps(config))
                built[name] = folder
            elif name == "spm-json":  # the same tokenizer as tokenizer.json alone (no tokenizer.model)
                folder = tmp_path_factory.mktemp("spm-json")
                shutil.copytree(get("spm"), folder, dirs_exist_ok=True)
                (folder / "tokenizer.model").unlink()
                built[name] = folder
            elif name == "mistral":
                folder = tmp_path_factory.mktemp("mistral-full")
                shutil.copytree(family_dirs("mistral"), folder, dirs_exist_ok=True)
                config = json.loads((folder / "config.json").read_text())
                config["sliding_window"] = None
                (folder / "config.json").write_text(json.dumps(config))
                built[name] = folder
            else:
                built[name] = family_dirs(name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory, sources):
    """exported(name, type) -> (summary, path): each model exported once per type."""
    from llamantino.release.gguf import export_gguf

    done = {}
    folder = tmp_path_factory.mktemp("gguf")

    def get(name, type_name):
        key = (name, type_name)
        if key not in done:
            path = folder / f"{name}-{type_name}.gguf"
            done[key] = export_gguf(sources(name), path, type=type_name), path
        return done[key]

    return get


MIXTURES = ("qwen3_moe",)
MODELS = sorted(FAMILIES) + ["demo", "spm", "spm-json", "linear-rope", *MIXTURES]


@pytest.mark.parametrize("name", MODELS)
def test_f32_and_f16_logits_and_token_ids_match_the_source(name, sources, exported):
    import torch

    from llamantino.models.gguf_files import load_gguf_model, load_gguf_tokenizer
    from transformers import AutoTokenizer

    source = sources(name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = logits_of(source_model(source), tokenizer, SENTENCES)
    for type_name, tolerance in (("f32", 1e-5), ("f16", 1e-2)):
        summary, path = exported(name, type_name)
        read_back = load_gguf_tokenizer(path)
        assert read_back(SENTENCES)["input_ids"] == tokenizer(SENTENCES)["input_ids"], type_name
        logits = logits_of(load_gguf_model(path), tokenizer, SENTENCES)
        per_position = (logits - reference).abs().amax(-1) / reference.abs().max()
        if name in MIXTURES and type_name == "f16":
            # F16 rounding moves a token's hidden state enough to change which experts a near tie
            # in the router picks, so a few positions take another path: the rest must agree
            assert float((per_position <= tolerance).float().mean()) >= 0.99, (name, type_name)
        else:
            error = float(per_position.max())
            assert error <= tolerance, (name, type_name, error)
        assert summary["kept_f16"] == []
    assert torch.isfinite(reference).all()


def test_metadata_as_llama_cpp_reads_it(sources, exported):
    """The keys llama.cpp reads, checked in the file itself (gguf.GGUFReader)."""
    from gguf import GGUFReader

    def fields(name):
        reader = GGUFReader(exported(name, "f32")[1])
        return {k: f.contents() for k, f in reader.fields.items()}, {t.name for t in reader.tensors}

    llama3, tensors = fields("llama3")
    assert llama3["general.architecture"] == "llama" and llama3["tokenizer.ggml.pre"] == "gpt-2"
    assert "rope_freqs.weight" in tensors and "output.weight" not in tensors  # Llama 3 scaling; tied output
    assert llama3["llama.rope.freq_base"] == 500000.0 and llama3["llama.attention.head_count_kv"] == 2
    vocab = FAMILIES["llama3"]
    tokens = llama3["tokenizer.ggml.tokens"]
    assert tokens[llama3["tokenizer.ggml.bos_token_id"]] == vocab.bos
    assert tokens[llama3["tokenizer.ggml.eos_token_id"]] == "<|eot_id|>"
    assert tokens[llama3["tokenizer.ggml.eot_token_id"]] == "<|eot_id|>"
    assert tokens[llama3["tokenizer.ggml.eom_token_id"]] == "<|eom_id|>"
    assert llama3["tokenizer.ggml.add_bos_token"] is True
    assert llama3["tokenizer.chat_template"] == vocab.template
    gemma2, _ = fields("gemma2")
    assert gemma2["gemma2.attn_logit_softcapping"] == 50.0 and gemma2["gemma2.final_logit_softcapping"] == 30.0
    assert gemma2["gemma2.attention.sliding_window"] == 8 and gemma2["gemma2.attention.key_length"] == 8
    gemma3, _ = fields("gemma3")
    assert list(gemma3["gemma3.attention.sliding_window_pattern"]) == [True, False]
    qwen2, _ = fields("qwen2")
    assert qwen2["tokenizer.ggml.add_bos_token"] is False and "tokenizer.ggml.bos_token_id" not in qwen2
    assert qwen2["tokenizer.ggml.tokens"][qwen2["tokenizer.ggml.eot_token_id"]] == "<|im_end|>"
    phi3, tensors = fields("phi3")
    assert "blk.0.attn_qkv.weight" in tensors and "blk.0.ffn_up.weight" in tensors  # fused, as llama.cpp expects
    assert phi3["phi3.attention.sliding_window"] == 8
    spm, _ = fields("spm")
    assert spm["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.scores" in spm


@pytest.mark.parametrize("name", ["demo", "spm"])
def test_vocab_extended_tokenizer_reads_back(tmp_path, sources, name):
    """`vocab extend` appends tokens and merges to a byte-level or a SentencePiece-style BPE; the
    exported file tokenizes as the extended tokenizer does."""
    from helpers.vocab import extend
    from transformers import AutoTokenizer

    from llamantino.models.gguf_files import load_gguf_tokenizer
    from llamantino.release.gguf import export_gguf

    extend(sources(name), tmp_path / "extended", add_tokens=40)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "extended")
    assert len(tokenizer) > len(AutoTokenizer.from_pretrained(sources(name)))
    summary = export_gguf(tmp_path / "extended", tmp_path / "extended.gguf", type="f16")
    assert summary["tokenizer"] == ("llama" if name == "spm" else "gpt2")
    read_back = load_gguf_tokenizer(tmp_path / "extended.gguf")
    ids = tokenizer(SENTENCES)["input_ids"]
    assert read_back(SENTENCES)["input_ids"] == ids
    assert max(max(row) for row in ids) >= len(AutoTokenizer.from_pretrained(sources(name)))  # new tokens in use


def test_q8_0_keeps_greedy_choices_and_bits_per_byte(sources, exported):
    import torch

    from llamantino.evaluate.bpb import compute_bpb
    from llamantino.models.gguf_files import load_gguf_model
    from transformers import AutoTokenizer

    source = sources("trained")
    tokenizer = AutoTokenizer.from_pretrained(source)
    summary, path = exported("trained", "q8_0")
    reference, quantised = source_model(source), load_gguf_model(path)
    a, b = logits_of(reference, tokenizer, SENTENCES), logits_of(quantised, tokenizer, SENTENCES)
    agreement = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    assert agreement >= 0.99, agreement
    heldout = [p for p in (DEMO / "it_heldout.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()][:20]
    source_bpb = compute_bpb(reference, tokenizer, heldout, max_length=256, stride=128)["bits_per_byte"]
    gguf_bpb = compute_bpb(quantised, tokenizer, heldout, max_length=256, stride=128)["bits_per_byte"]
    assert gguf_bpb <= source_bpb * 1.01, (gguf_bpb, source_bpb)
    assert torch.isfinite(b).all()


@pytest.mark.parametrize("type_name, block_bytes", [("q8_0", 34), ("q4_0", 18)])
def test_quantised_tensors_take_their_block_size(type_name, block_bytes, exported):
    """34 bytes per 32 weights for Q8_0 (18 for Q4_0); 1-D tensors stay F32; the file is the
    tensors plus metadata."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    summary, path = exported("demo", type_name)
    reader = GGUFReader(path)
    quantised = 0
    for tensor in reader.tensors:
        n = int(tensor.n_elements)
        if len(tensor.shape) == 1:
            assert tensor.tensor_type == Q.F32, tensor.name
        else:
            assert tensor.tensor_type == Q[type_name.upper()], tensor.name
            assert tensor.n_bytes == n // 32 * block_bytes, tensor.name
            quantised += tensor.n_bytes
    assert summary["kept_f16"] == []
    assert quantised < summary["bytes"] < quantised + sum(
        int(t.n_elements) * 4 for t in reader.tensors if len(t.shape) == 1) + 200_000


def test_rows_that_do_not_fill_a_block_stay_f16(tmp_path, family_dirs):
    """hidden 32 fits Q8_0's 32-value blocks; the MLP's down projection of a 40-wide MLP does not."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    from llamantino.release.gguf import export_gguf

    folder = tmp_path / "odd"
    shutil.copytree(family_dirs("qwen2"), folder)
    _resize_mlp(folder, 40)
    summary = export_gguf(folder, tmp_path / "odd.gguf", type="q8_0")
    assert summary["kept_f16"] == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    types = {t.name: t.tensor_type for t in GGUFReader(tmp_path / "odd.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == Q.F16 and types["blk.0.ffn_up.weight"] == Q.Q8_0


def _resize_mlp(folder: Path, width: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    config.intermediate_size = width
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)


def test_adapter_merged_on_export_equals_exporting_the_merged_model(tmp_path, tiny_model_dir, make_random_adapter):
    from gguf import GGUFReader

    from llamantino.models.merge import merge_adapter
    from llamantino.release.gguf import export_gguf

    adapter = make_random_adapter(tmp_path / "adapter", seed=3)
    merge_adapter(tiny_model_dir, adapter, tmp_path / "merged")
    with_adapter = export_gguf(tiny_model_dir, tmp_path / "a.gguf", adapter=adapter, type="f32")
    merged = export_gguf(tmp_path / "merged", tmp_path / "b.gguf", type="f32")
    base = export_gguf(tiny_model_dir, tmp_path / "c.gguf", type="f32")
    tensors = [{t.name: t.data.tobytes() for t in GGUFReader(tmp_path / f"{n}.gguf").tensors} for n in "abc"]
    assert tensors[0] == tensors[1]
    assert tensors[0]["blk.0.attn_q.weight"] != tensors[2]["blk.0.attn_q.weight"]  # the adapter did change it
    assert with_adapter["tensors"] == merged["tensors"] == base["tensors"]


# ---------------------------------------------------------------------------------------
# Bad input: one line, nothing left behind


def _left_behind(folder: Path, keep=()) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_unsupported_architecture_and_type(tmp_path, tiny_model_dir):
    from llamantino.core.errors import LlamantinoError
    from llamantino.release.gguf import export_gguf

    folder = tmp_path / "gpt2like"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="falcon", architectures=["FalconForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LlamantinoError, match=r"model_type 'falcon' \(FalconForCausalLM\) is not supported") as exc:
        export_gguf(folder, out / "x.gguf")
    assert "\n" not in str(exc.value)
    with pytest.raises(LlamantinoError, match="type 'q4_k' is not supported; valid: f32, f16, bf16, q8_0, q4_0"):
        export_gguf(tiny_model_dir, out / "x.gguf", type="q4_k")
    assert _left_behind(out) == []


def test_adapter_for_another_base(tmp_path, family_dirs, make_random_adapter):
    from llamantino.core.errors import LlamantinoError
    from llamantino.release.gguf import export_gguf

    adapter = make_random_adapter(tmp_path / "adapter", seed=1)  # made for the tiny LLaMA (hidden 64)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LlamantinoError, match="an adapter for another base model") as exc:
        export_gguf(family_dirs("llama3"), out / "x.gguf", adapter=adapter)
    assert "\n" not in str(exc.value)
    assert _left_behind(out) == []


def test_full_disk_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    import gguf

    from llamantino.core.errors import LlamantinoError
    from llamantino.release.gguf import export_gguf

    written = []
    real = gguf.GGUFWriter.write_tensor_data

    def full_after_two(self, tensor, *args, **kwargs):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(tensor.nbytes)
        return real(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full_after_two)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LlamantinoError, match=r"x.gguf: cannot write the GGUF file \(the disk is full\)"):
        export_gguf(tiny_model_dir, out / "x.gguf")
    assert len(written) == 2 and _left_behind(out) == []


def test_overwrite_replaces_only_a_file_llamantino_wrote(tmp_path, tiny_model_dir):
    from llamantino.core.errors import LlamantinoError
    from llamantino.release.gguf import export_gguf

    target = tmp_path / "model.gguf"
    target.write_bytes(b"someone else's file")
    with pytest.raises(LlamantinoError, match="exists; pass --overwrite"):
        export_gguf(tiny_model_dir, target)
    with pytest.raises(LlamantinoError, match="no GGUF llamantino wrote"):
        export_gguf(tiny_model_dir, target, overwrite=True)
    assert target.read_bytes() == b"someone else's file"
    target.unlink()
    first = export_gguf(tiny_model_dir, target, type="f32")
    second = export_gguf(tiny_model_dir, target, type="f16", overwrite=True)
    assert second["bytes"] < first["bytes"]
    digest, name = (tmp_path / "model.gguf.sha256").read_text().split()
    assert name == "model.gguf" and digest == second["sha256"]
    assert _left_behind(tmp_path) == ["model.gguf", "model.gguf.sha256"]


def test_command_line_and_recipe_stage(tmp_path, tiny_model_dir, capsys):
    from llamantino.cli import main
    from llamantino.core.runner import config_for
    from llamantino.release.gguf import run

    assert main(["export", "gguf", str(tiny_model_dir), "--output", str(tmp_path / "m.gguf"), "--type", "q8_0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"]["type"] == "q8_0" and (tmp_path / "m.gguf").is_file()
    cfg = config_for("export_gguf", model=str(tiny_model_dir), output=str(tmp_path / "m.gguf"), type="q8_0")
    assert run(cfg)["status"] == "skipped (done)"  # same settings: the recipe skips it
    assert main(["export", "gguf", str(tiny_model_dir), "--output", str(tmp_path / "n.gguf"), "--type", "q5_k"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "valid: f32, f16, bf16, q8_0, q4_0" in error
    assert not (tmp_path / "n.gguf").exists()


def test_eval_bpb_of_a_gguf_file(tmp_path, exported, sources):
    """`eval bpb --model FILE.gguf` scores the file as the model folder is scored (F32: equal)."""
    from llamantino.core.runner import config_for
    from llamantino.evaluate.bpb import run

    _, path = exported("demo", "f32")
    text = tmp_path / "it.txt"
    text.write_text("\n\n".join(SENTENCES[:20]), encoding="utf-8")
    results = []
    for model in (path, sources("demo")):
        out = tmp_path / f"{Path(model).name}.json"
        run(config_for("bpb", model=str(model), data=[str(text)], output=str(out)))
        results.append(json.loads(out.read_text())["bits_per_byte"])
    assert results[0] == pytest.approx(results[1], rel=1e-6)


def digit_merges(state: dict) -> None:
    """Give a byte-level BPE the merges 1+2, 12+3, 123+4, 1234+5 (in place of its last four), so
    that the split rule decides the ids of "12345": one token under GPT-2's rule, 123 + 45 under
    Llama 3's, single digits under Qwen 2's."""
    model = state["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    dropped = ["".join(m) for m in merges[-4:]]
    ids = sorted(model["vocab"].pop(token) for token in dropped)
    merges = merges[:-4] + [["1", "2"], ["12", "3"], ["123", "4"], ["1234", "5"]]
    for token, i in zip(("12", "123", "1234", "12345"), ids):
        model["vocab"][token] = i
    model["merges"] = merges


@pytest.mark.parametrize("family, split, pre", [("llama3", "LLAMA3_SPLIT", "llama-bpe"), ("qwen2", "QWEN2_SPLIT", "qwen2"),
                                                ("llama3", None, "gpt-2"), ("qwen2", r"\p{L}+|\s+", None)])
def test_split_rule_names_the_pre_tokenizer(tmp_path, family_dirs, family, split, pre):
    """A tokenizer splitting text as Llama 3 or Qwen 2 does gets llama.cpp's name for that rule
    (GPT-2's own rule: gpt-2) and reads back with the same ids; a rule llama.cpp does not
    implement is refused in one line."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from llamantino.core.errors import LlamantinoError
    from llamantino.models.gguf_files import load_gguf_tokenizer
    from llamantino.release import gguf as export

    folder = tmp_path / "model"
    shutil.copytree(family_dirs(family), folder)
    state = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    digit_merges(state)
    if split is not None:
        state["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": getattr(export, split, split)}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(state), encoding="utf-8")
    if pre is None:
        with pytest.raises(LlamantinoError, match="none llama.cpp implements") as exc:
            export.export_gguf(folder, tmp_path / "x.gguf")
        assert "\n" not in str(exc.value) and not (tmp_path / "x.gguf").exists()
        return
    summary = export.export_gguf(folder, tmp_path / "x.gguf")
    assert summary["pre_tokenizer"] == pre
    assert GGUFReader(tmp_path / "x.gguf").fields["tokenizer.ggml.pre"].contents() == pre
    texts = SENTENCES + ["Nel 12345 ho letto 12345 libri!!\n\n  Davvero?", "l'anno   scorso\tqui 123"]
    reference = AutoTokenizer.from_pretrained(folder)(texts)["input_ids"]
    assert load_gguf_tokenizer(tmp_path / "x.gguf")(texts)["input_ids"] == reference


def test_a_run_folder_stands_for_its_base_and_adapter(tmp_path, tiny_model_dir, make_random_adapter):
    """`export gguf RUN`: a run holding an adapter is exported as its base with the adapter merged."""
    from gguf import GGUFReader

    from llamantino.release.gguf import export_gguf

    run = make_random_adapter(tmp_path / "run", seed=5)
    (run / "manifest.json").write_text(json.dumps({"stage": "sft", "settings": {"model": str(tiny_model_dir)}}))
    from_run = export_gguf(run, tmp_path / "a.gguf", type="f32")
    explicit = export_gguf(tiny_model_dir, tmp_path / "b.gguf", adapter=run, type="f32")
    assert from_run["adapter"] == str(run) == explicit["adapter"]
    a, b = (GGUFReader(tmp_path / n).tensors for n in ("a.gguf", "b.gguf"))
    assert [t.data.tobytes() for t in a] == [t.data.tobytes() for t in b]


def test_a_run_trained_on_a_merged_model_is_refused(tmp_path, tiny_model_dir, make_random_adapter):
    """A run whose adapter was trained on base + another adapter (sft after adapt) does not stand
    for base + its own adapter: exporting that would silently drop the first adapter."""
    from llamantino.core.errors import LlamantinoError
    from llamantino.release.gguf import export_gguf

    run = make_random_adapter(tmp_path / "run", seed=5)
    (run / "manifest.json").write_text(json.dumps(
        {"stage": "sft", "settings": {"model": str(tiny_model_dir), "adapter": str(tmp_path / "adapt")}}))
    with pytest.raises(LlamantinoError, match="give that merged model") as err:
        export_gguf(run, tmp_path / "a.gguf", type="f32")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_adapter_with_a_grown_vocabulary(tmp_path, tiny_model_dir):
    """An adapter run that added tokens carries the grown embeddings and output layer whole
    (modules_to_save) and its tokenizer: the export takes all three, and equals exporting the
    merged model."""
    import torch
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamantino.models.merge import merge_adapter
    from llamantino.release.gguf import export_gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|fine|>", "<|turno|>"]})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=["embed_tokens", "lm_head"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    merge_adapter(tiny_model_dir, adapter, tmp_path / "merged")
    summary = export_gguf(tiny_model_dir, tmp_path / "a.gguf", adapter=adapter, type="f32")
    export_gguf(tmp_path / "merged", tmp_path / "b.gguf", type="f32")
    a, b = GGUFReader(tmp_path / "a.gguf"), GGUFReader(tmp_path / "b.gguf")
    assert {t.name: t.data.tobytes() for t in a.tensors} == {t.name: t.data.tobytes() for t in b.tensors}
    tokens = a.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == len(tokenizer) and tokens[-2:] == ["<|fine|>", "<|turno|>"]
    assert summary["tensors"] == len(a.tensors)


@pytest.mark.parametrize("model_type, message", [("qwen2_moe", "mixture of experts; export gguf does not support MoE"),
                                                 ("gemma3", "Gemma 3 vision-language checkpoint")])
def test_moe_and_vision_language_checkpoints_are_refused(tmp_path, tiny_model_dir, model_type, message):
    from llamantino.core.errors import LlamantinoError
    from llamantino.release.gguf import export_gguf

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlamantinoError, match=message):
        export_gguf(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_mixtral_experts_stacked_as_llama_cpp_reads_them(sources, exported):
    """Mixtral is llama.cpp's `llama` with experts, which transformers cannot read back from GGUF:
    the file is compared with the checkpoint tensor by tensor (gguf.GGUFReader)."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from safetensors import safe_open

    from llamantino.core.errors import LlamantinoError
    from llamantino.models.gguf_files import load_gguf_model
    from llamantino.release.gguf import permute

    summary, path = exported("mixtral", "f32")
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.expert_count"] == 4 and fields["llama.expert_used_count"] == 2
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    with safe_open(sources("mixtral") / "model.safetensors", "pt") as handle:
        for layer in range(2):
            prefix = f"model.layers.{layer}.block_sparse_moe."
            for gguf_name, hf in (("ffn_gate_exps", "w1"), ("ffn_down_exps", "w2"), ("ffn_up_exps", "w3")):
                stacked = torch.stack([handle.get_tensor(f"{prefix}experts.{e}.{hf}.weight") for e in range(4)])
                assert np.array_equal(tensors[f"blk.{layer}.{gguf_name}.weight"], stacked.numpy())
            assert np.array_equal(tensors[f"blk.{layer}.ffn_gate_inp.weight"], handle.get_tensor(prefix + "gate.weight").numpy())
            q = handle.get_tensor(f"model.layers.{layer}.self_attn.q_proj.weight")
            assert np.array_equal(tensors[f"blk.{layer}.attn_q.weight"], permute(q, 4, 4).numpy())
    with pytest.raises(LlamantinoError, match="transformers cannot read it back"):
        load_gguf_model(path)


def fused_copy(source: Path, folder: Path) -> Path:
    """`source` (a per-expert qwen3_moe checkpoint) with its experts fused as transformers 5 holds
    them in memory (experts.gate_up_proj, the gate first, and experts.down_proj)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(source, folder)
    with safe_open(source / "model.safetensors", "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    for layer in range(2):
        prefix = f"model.layers.{layer}.mlp.experts"
        pop = {part: [tensors.pop(f"{prefix}.{e}.{part}.weight") for e in range(4)]
               for part in ("gate_proj", "up_proj", "down_proj")}
        tensors[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(pop["gate_proj"], pop["up_proj"])])
        tensors[f"{prefix}.down_proj"] = torch.stack(pop["down_proj"])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_fused_experts_as_transformers_5_holds_them(tmp_path, sources, exported):
    """A qwen3_moe checkpoint whose experts are fused (experts.gate_up_proj, experts.down_proj, as
    transformers 5 holds them in memory) gives the same file as the per-expert checkpoint."""
    from gguf import GGUFReader

    from llamantino.release.gguf import export_gguf

    folder = fused_copy(sources("qwen3_moe"), tmp_path / "fused")
    export_gguf(folder, tmp_path / "fused.gguf", type="f32")
    _, reference = exported("qwen3_moe", "f32")
    fused = {t.name: t.data.tobytes() for t in GGUFReader(tmp_path / "fused.gguf").tensors}
    assert fused == {t.name: t.data.tobytes() for t in GGUFReader(reference).tensors}


def moe_adapter(source: Path, folder: Path, seed: int = 0, modules=("q_proj", "v_proj")) -> Path:
    """A random LoRA adapter of a tiny MoE as `adapt` makes one: LoRA on every expert through PEFT
    target_parameters (and on `modules`), the router trained whole (its copy moved off the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=list(modules) or None,
                                            target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                                            modules_to_save=["mlp.gate"], init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if ".modules_to_save." in name:
                param.add_(torch.randn_like(param) * 0.1)
    peft.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "qwen3_moe fused"])
def test_moe_adapter_merged_on_export_equals_exporting_the_merged_model(tmp_path, sources, exported, name):
    """A MoE adapter (LoRA on each expert of the fused weights, a router trained whole) merged while
    exporting gives the file of the merged model (`llamantino merge`) tensor for tensor: per-expert
    checkpoints (Mixtral's w1/w2/w3 under block_sparse_moe, Qwen3-MoE's gate/up/down_proj) and
    fused ones (the gate and up halves of gate_up_proj folded apart)."""
    from gguf import GGUFReader

    from llamantino.models.merge import merge_adapter
    from llamantino.release.gguf import export_gguf

    model_type = name.split()[0]
    source = sources(model_type)
    adapter = moe_adapter(source, tmp_path / "adapter")
    merge_adapter(source, adapter, tmp_path / "merged")
    folder = fused_copy(source, tmp_path / "fused") if name.endswith("fused") else source
    summary = export_gguf(folder, tmp_path / "a.gguf", adapter=adapter, type="f32")
    export_gguf(tmp_path / "merged", tmp_path / "b.gguf", type="f32")
    a, b = ({t.name: t.data.tobytes() for t in GGUFReader(tmp_path / n).tensors} for n in ("a.gguf", "b.gguf"))
    assert a == b and summary["tensors"] == len(a)
    base = {t.name: t.data.tobytes() for t in GGUFReader(exported(model_type, "f32")[1]).tensors}
    changed = {n.split(".", 2)[2] for n in a if a[n] != base[n]}
    assert changed == {"attn_q.weight", "attn_v.weight", "ffn_gate_inp.weight", "ffn_gate_exps.weight",
                       "ffn_up_exps.weight", "ffn_down_exps.weight"}


def test_a_moe_adapter_for_other_experts_is_refused(tmp_path, sources):
    """LoRA on experts of another shape (an adapter of another base): one line, nothing written."""
    from llamantino.core.errors import LlamantinoError
    from llamantino.release.gguf import export_gguf

    adapter = moe_adapter(sources("qwen3_moe"), tmp_path / "adapter", modules=())
    with pytest.raises(LlamantinoError, match="fits no expert weight of model.layers.0.mlp.experts") as err:
        export_gguf(sources("mixtral"), tmp_path / "x.gguf", adapter=adapter)
    assert "\n" not in str(err.value) and not (tmp_path / "x.gguf").exists()


def test_end_of_turn_is_the_run_chat_formats(tmp_path, family_dirs, caplog):
    """A Llama 3 vocabulary with ChatML tokens added (as Llama 3 models tuned in ChatML have it) holds
    two known end-of-turn tokens, <|eot_id|> and <|im_end|>. The GGUF's end-of-turn is the one the
    run's chat format ends answers with: its manifest's prompt_format, else the tokenizer's own chat
    template; the first known token in the vocabulary only when neither says (with a warning). The
    Ollama export writes the same one as its Modelfile stops at."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamantino import __version__
    from llamantino.data.prompts import CHATML_TEMPLATE
    from llamantino.release.gguf import END_OF_TURN, export_gguf
    from llamantino.release.ollama import write_files

    def folder_with(name, template, prompt_format=None, family="llama3", added=("<|im_start|>", "<|im_end|>")):
        folder = tmp_path / name
        tokenizer = AutoTokenizer.from_pretrained(family_dirs(family))
        tokenizer.add_special_tokens({"additional_special_tokens": list(added)})
        tokenizer.chat_template = template
        model = AutoModelForCausalLM.from_pretrained(family_dirs(family), dtype=torch.float32)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if prompt_format:
            (folder / "manifest.json").write_text(json.dumps({"llamantino": __version__, "stage": "instruct",
                                                              "settings": {"prompt_format": prompt_format}}))
        return folder

    def eot(folder):
        summary = export_gguf(folder, tmp_path / f"{folder.name}.gguf", type="f32")
        fields = GGUFReader(tmp_path / f"{folder.name}.gguf").fields
        tokens = fields["tokenizer.ggml.tokens"].contents()
        return tokens[fields["tokenizer.ggml.eot_token_id"].contents()], summary["end_of_turn_from"]

    llama3 = FAMILIES["llama3"].template
    assert [t for t in END_OF_TURN if t in AutoTokenizer.from_pretrained(folder_with("both", llama3)).get_vocab()] \
        == ["<|eot_id|>", "<|im_end|>"]
    assert eot(folder_with("run-chatml", llama3, "chatml")) == ("<|im_end|>", "the run's prompt format chatml")
    assert eot(folder_with("own-chatml", CHATML_TEMPLATE)) == ("<|im_end|>", "the chat template")
    assert eot(folder_with("own-llama3", llama3)) == ("<|eot_id|>", "the chat template")
    with caplog.at_level("WARNING", logger="llamantino.release.gguf"):
        assert eot(folder_with("none", None)) == ("<|eot_id|>", "the first known end-of-turn token in the vocabulary")
    assert "no prompt format and no chat template; the end-of-turn token written is <|eot_id|>" in caplog.text

    # export ollama: a Qwen vocabulary that also holds <|eot_id|>; its ChatML template ends answers
    # with <|im_end|>, which the Modelfile stops at and the GGUF calls its end of turn.
    qwen = folder_with("qwen", FAMILIES["qwen2"].template, family="qwen2", added=("<|eot_id|>",))
    out = tmp_path / "ollama"
    out.mkdir()
    summary = write_files(out, qwen, None, name="m", type="f32")
    fields = GGUFReader(out / "m.gguf").fields
    assert fields["tokenizer.ggml.tokens"].contents()[fields["tokenizer.ggml.eot_token_id"].contents()] == \
        "<|im_end|>" == summary["end_of_turn"]
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text()


def test_lora_on_a_linear_layer_a_parameter_target_also_names(tmp_path, tiny_model_dir, make_random_adapter):
    """A `lora_targets` entry naming both a fused expert weight and a linear layer (`down_proj`, as a
    shared expert beside fused experts has) puts it in target_modules and target_parameters: the
    linear layer's LoRA pair is merged as a linear layer's, not taken for LoRA on experts."""
    from gguf import GGUFReader

    from llamantino.release.gguf import export_gguf

    adapter = make_random_adapter(tmp_path / "adapter", seed=3)
    both = tmp_path / "both"
    shutil.copytree(adapter, both)
    config = json.loads((both / "adapter_config.json").read_text())
    config["target_parameters"] = ["mlp.experts.down_proj", "q_proj"]
    (both / "adapter_config.json").write_text(json.dumps(config))
    export_gguf(tiny_model_dir, tmp_path / "a.gguf", adapter=adapter, type="f32")
    export_gguf(tiny_model_dir, tmp_path / "b.gguf", adapter=both, type="f32")
    a, b = (GGUFReader(tmp_path / n).tensors for n in ("a.gguf", "b.gguf"))
    assert [t.data.tobytes() for t in a] == [t.data.tobytes() for t in b]
