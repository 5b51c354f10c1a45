"""Exact weight differences: bit-exact rebuilds, the manifest, growth of the vocabulary,
tied embeddings, shards, bad inputs named one by one, and bounded memory."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from llamantino import cli
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import sha256_file
from llamantino.models.weight_files import WeightFile
from llamantino.release.weightdiff import apply_diff, make_diff, read_diff_manifest, tensor_hashes

from helpers.weightdiff import CONFIG, random_tensors, write_checkpoint

INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def with_special_values(tensors, dtype, at=0):
    """Put NaN, infinities, signed zero, subnormals and the extremes in one tensor."""
    info = torch.finfo(dtype)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, info.tiny / 4,
                            -info.tiny / 8, info.max, -info.max, info.eps], dtype=torch.float32).to(dtype)
    out = dict(tensors)
    flat = out["model.layers.0.self_attn.q_proj.weight"].flatten().clone()
    flat[at: at + len(special)] = special
    out["model.layers.0.self_attn.q_proj.weight"] = flat.view(16, 16)
    return out


def same_bits(a, b):
    return torch.equal(a.view(INT_VIEW[a.dtype]), b.view(INT_VIEW[b.dtype]))


def load(folder):
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def no_leftovers(parent):
    return not [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("relation", ["unrelated", "close"])
def test_rebuild_is_bit_exact(tmp_path, dtype, relation):
    base = with_special_values(random_tensors(1, dtype), dtype)
    if relation == "unrelated":
        target = with_special_values(random_tensors(2, dtype), dtype, at=20)
    else:  # a fine-tuning step: every weight moves by about 1%
        g = torch.Generator().manual_seed(3)
        target = {n: (t.float() + t.float() * 0.01 * torch.randn(t.shape, generator=g)).to(dtype)
                  for n, t in base.items()}
    write_checkpoint(tmp_path / "base", base)
    write_checkpoint(tmp_path / "target", target)
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    apply_diff(tmp_path / "base", tmp_path / "diff", tmp_path / "rebuilt")
    rebuilt = load(tmp_path / "rebuilt")
    assert set(rebuilt) == set(target)
    for name, tensor in target.items():
        assert rebuilt[name].dtype == dtype and same_bits(rebuilt[name], tensor), name
    # same files, byte for byte, and the target's side files travel with the difference
    assert sha256_file(tmp_path / "rebuilt/model.safetensors") == sha256_file(tmp_path / "target/model.safetensors")
    assert (tmp_path / "diff/config.json").read_text() == (tmp_path / "rebuilt/config.json").read_text()
    assert (tmp_path / "rebuilt/tokenizer_config.json").is_file()


def test_manifest_records_every_tensor(tmp_path):
    base, target = random_tensors(1), random_tensors(2)
    write_checkpoint(tmp_path / "base", base)
    write_checkpoint(tmp_path / "target", target)
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff", base_name="my-base")
    manifest = read_diff_manifest(tmp_path / "diff")
    assert manifest["encoding"].startswith("xor")
    assert manifest["base"]["name"] == "my-base"
    assert manifest["base"]["architecture"]["hidden_size"] == 16
    by_name = {e["name"]: e for e in manifest["tensors"]}
    assert set(by_name) == set(target)
    hashes_base, hashes_target = tensor_hashes(tmp_path / "base"), tensor_hashes(tmp_path / "target")
    for name, entry in by_name.items():
        assert entry["shape"] == list(target[name].shape) and entry["dtype"] == "F32"
        assert entry["sha256"] == hashes_target[name]
        assert entry["base"]["sha256"] == hashes_base[name]
    assert manifest["rows_added"] == {} and manifest["target_only"] == [] and manifest["base_only"] == []
    assert {f["name"] for f in manifest["side_files"]} == {"config.json", "tokenizer_config.json"}
    # the diff's own files are plain safetensors of unsigned bits
    from safetensors import safe_open

    with safe_open(tmp_path / "diff" / manifest["target"]["files"][0]["diff_file"], "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.uint32


def test_deterministic_diff(tmp_path):
    write_checkpoint(tmp_path / "base", random_tensors(1))
    write_checkpoint(tmp_path / "target", random_tensors(2))
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "d1")
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "d2")
    for path in (tmp_path / "d1").iterdir():
        assert sha256_file(path) == sha256_file(tmp_path / "d2" / path.name), path.name


def test_sharded_checkpoints(tmp_path):
    base, target = random_tensors(1), random_tensors(2)
    write_checkpoint(tmp_path / "base", base, shards=2)
    write_checkpoint(tmp_path / "target", target, shards=3)
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    assert len(list((tmp_path / "diff").glob("diff-*-of-00003.safetensors"))) == 3
    apply_diff(tmp_path / "base", tmp_path / "diff", tmp_path / "rebuilt")
    for path in (tmp_path / "target").glob("model*"):
        assert sha256_file(tmp_path / "rebuilt" / path.name) == sha256_file(path), path.name


def test_target_only_and_base_only_tensors(tmp_path):
    base, target = random_tensors(1), random_tensors(2)
    base["model.extra_buffer"] = torch.ones(4)
    target["model.new_head.weight"] = torch.randn(3, 16)
    write_checkpoint(tmp_path / "base", base)
    write_checkpoint(tmp_path / "target", target)
    summary = make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    assert summary["target_only"] == ["model.new_head.weight"] and summary["base_only"] == ["model.extra_buffer"]
    apply_diff(tmp_path / "base", tmp_path / "diff", tmp_path / "rebuilt")
    assert tensor_hashes(tmp_path / "rebuilt") == tensor_hashes(tmp_path / "target")


def test_tied_embeddings(tmp_path):
    # base ties lm_head to the input embeddings (no lm_head in its file), the target unties them
    base = random_tensors(1)
    del base["lm_head.weight"]
    write_checkpoint(tmp_path / "base", base, {**CONFIG, "tie_word_embeddings": True})
    g = torch.Generator().manual_seed(7)
    target = {n: t + 1e-4 * torch.randn(t.shape, generator=g) for n, t in random_tensors(1).items()}
    target["lm_head.weight"] = base["model.embed_tokens.weight"] + 1e-4
    write_checkpoint(tmp_path / "target", target)
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    entry = {e["name"]: e for e in read_diff_manifest(tmp_path / "diff")["tensors"]}["lm_head.weight"]
    assert entry["base"]["name"] == "model.embed_tokens.weight"
    apply_diff(tmp_path / "base", tmp_path / "diff", tmp_path / "rebuilt")
    assert tensor_hashes(tmp_path / "rebuilt") == tensor_hashes(tmp_path / "target")
    # both tied: lm_head is in neither file and nothing invents it
    write_checkpoint(tmp_path / "target2", {n: t for n, t in target.items() if n != "lm_head.weight"},
                     {**CONFIG, "tie_word_embeddings": True})
    make_diff(tmp_path / "base", tmp_path / "target2", tmp_path / "diff2")
    apply_diff(tmp_path / "base", tmp_path / "diff2", tmp_path / "rebuilt2")
    assert "lm_head.weight" not in tensor_hashes(tmp_path / "rebuilt2")
    assert json.loads((tmp_path / "rebuilt2/config.json").read_text())["tie_word_embeddings"] is True


def test_vocabulary_growth_with_pad(tmp_path, tiny_model_dir, tiny_tokenizer):
    """512 -> 513 tokens with `<pad>`, the way the 70B chat model grew 32000 -> 32001."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(0)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "target")
    tokenizer.save_pretrained(tmp_path / "target")
    summary = make_diff(tiny_model_dir, tmp_path / "target", tmp_path / "diff")
    assert summary["rows_added"] == {"model.embed_tokens.weight": 1, "lm_head.weight": 1}
    manifest = read_diff_manifest(tmp_path / "diff")
    assert manifest["base"]["architecture"]["vocab_size"] == 512
    assert manifest["target"]["architecture"]["vocab_size"] == 513
    apply_diff(tiny_model_dir, tmp_path / "diff", tmp_path / "rebuilt")
    assert tensor_hashes(tmp_path / "rebuilt") == tensor_hashes(tmp_path / "target")
    rebuilt_tok = AutoTokenizer.from_pretrained(tmp_path / "rebuilt")
    assert len(rebuilt_tok) == 513 and rebuilt_tok.pad_token == "<pad>"
    rebuilt = LlamaForCausalLM.from_pretrained(tmp_path / "rebuilt", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 512]])
    assert torch.equal(rebuilt(ids).logits, model(ids).logits)


@pytest.mark.parametrize("chunk", [1000, 4096])
def test_tensors_larger_than_a_chunk(tmp_path, monkeypatch, chunk):
    """Tensors span many chunks; added rows start inside a chunk; odd chunk sizes XOR bytewise."""
    import llamantino.release.weightdiff as weightdiff

    monkeypatch.setattr(weightdiff, "CHUNK", chunk)
    base = random_tensors(1, torch.bfloat16)
    target = random_tensors(2, torch.bfloat16, vocab=45)  # 40 -> 45 rows of 32 bytes
    target["model.extra.weight"] = torch.randn(100, 16)  # only in the target
    write_checkpoint(tmp_path / "base", base)
    write_checkpoint(tmp_path / "target", target, {**CONFIG, "vocab_size": 45})
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    apply_diff(tmp_path / "base", tmp_path / "diff", tmp_path / "rebuilt")
    assert sha256_file(tmp_path / "rebuilt/model.safetensors") == sha256_file(tmp_path / "target/model.safetensors")
    assert tensor_hashes(tmp_path / "rebuilt") == tensor_hashes(tmp_path / "target")
    base["lm_head.weight"][3, 3] += 1
    base["model.layers.1.mlp.up_proj.weight"][31, 15] += 1
    write_checkpoint(tmp_path / "other", base)
    with pytest.raises(LlamantinoError, match="2 of 7 base tensor.*: lm_head.weight, model.layers.1.mlp.up_proj"):
        apply_diff(tmp_path / "other", tmp_path / "diff", tmp_path / "out")


# ---------------------------------------------------------------------------------------
# Bad input: one clear error each, and no output folder


@pytest.fixture
def made(tmp_path):
    write_checkpoint(tmp_path / "base", random_tensors(1), shards=2)
    write_checkpoint(tmp_path / "target", random_tensors(2), shards=2)
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    return tmp_path


def refused(made, match, base=None, diff=None):
    out = made / "out" / "rebuilt"
    with pytest.raises(LlamantinoError, match=match) as info:
        apply_diff(base or made / "base", diff or made / "diff", out)
    assert "\n" not in str(info.value)
    assert not out.exists() and (not out.parent.exists() or no_leftovers(out.parent))
    return str(info.value)


def test_wrong_base_names_every_tensor(made):
    tensors = random_tensors(1)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] += 1e-3
    write_checkpoint(made / "other", tensors, shards=2)
    message = refused(made, "2 of 7 base tensor", base=made / "other")
    assert "model.norm.weight" in message and "model.layers.1.mlp.up_proj.weight" in message
    assert "model.layers.0" not in message


def test_missing_base_shard(made):
    (made / "base/model-00002-of-00002.safetensors").unlink()
    refused(made, "missing weight file.*model-00002-of-00002.safetensors")


def test_missing_diff_shard(made):
    (made / "diff/diff-00001-of-00002.safetensors").unlink()
    refused(made, "missing difference file.*diff-00001-of-00002.safetensors")


def test_truncated_diff(made):
    path = made / "diff/diff-00002-of-00002.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    refused(made, "diff-00002-of-00002.safetensors: truncated")


def test_damaged_diff_names_the_tensor(made):
    manifest = read_diff_manifest(made / "diff")
    entry = next(e for e in manifest["tensors"] if e["name"] == "model.norm.weight")
    path = made / "diff" / entry["diff_file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits inside the last tensor of the file
    path.write_bytes(bytes(data))
    last = list(WeightFile(path).tensors)[-1]
    refused(made, f"do not match their recorded sha256.*{last}")


def test_dtype_mismatch(made):
    write_checkpoint(made / "half", {n: t.half() for n, t in random_tensors(1).items()})
    message = refused(made, "dtype mismatch", base=made / "half")
    assert "model.norm.weight (F16, expected F32)" in message
    with pytest.raises(LlamantinoError, match="dtype mismatch.*F16 in the base, F32 in the target"):
        make_diff(made / "half", made / "target", made / "d2")
    assert not (made / "d2").exists()


def test_other_architecture(made):
    write_checkpoint(made / "wide", random_tensors(1), {**CONFIG, "hidden_size": 32, "num_hidden_layers": 3})
    refused(made, "another architecture.*hidden_size is 32, expected 16.*num_hidden_layers is 3, expected 2",
            base=made / "wide")


def test_not_a_diff_and_not_a_model(made):
    refused(made, "not a weight difference", diff=made / "target")
    refused(made, "no config.json", base=made / "diff" / "..")


def test_output_is_protected(made):
    (made / "busy").mkdir()
    (made / "busy/file").write_text("x")
    with pytest.raises(LlamantinoError, match="not empty; pass --overwrite"):
        apply_diff(made / "base", made / "diff", made / "busy")
    with pytest.raises(LlamantinoError, match="must differ from --base"):
        apply_diff(made / "base", made / "diff", made / "base", overwrite=True)
    # --overwrite replaces only a llamantino output: a user's file stays (it used to be deleted)
    with pytest.raises(LlamantinoError, match="no llamantino run wrote \\(e.g. file\\)"):
        apply_diff(made / "base", made / "diff", made / "busy", overwrite=True)
    assert (made / "busy/file").read_text() == "x"
    (made / "busy/file").unlink()
    apply_diff(made / "base", made / "diff", made / "busy", overwrite=True)
    apply_diff(made / "base", made / "diff", made / "busy", overwrite=True)  # its own output: replaced
    assert tensor_hashes(made / "busy") == tensor_hashes(made / "target")


def test_command_line(made, capsys):
    assert cli.main(["diff", "make", "--base", str(made / "base"), "--target", str(made / "target"),
                     "--output", str(made / "d")]) == 0
    assert cli.main(["diff", "apply", "--base", str(made / "base"), "--diff", str(made / "d"),
                     "--output", str(made / "t")]) == 0
    assert tensor_hashes(made / "t") == tensor_hashes(made / "target")
    capsys.readouterr()
    assert cli.main(["diff", "apply", "--base", str(made / "target"), "--diff", str(made / "d"),
                     "--output", str(made / "t2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "7 of 7 base tensor(s) differ" in err


# ---------------------------------------------------------------------------------------
# Memory


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc (Linux)")
def test_apply_peak_memory_stays_below_the_largest_tensor(tmp_path):
    """A 200 MiB checkpoint of 53 tensors rebuilds in less memory than its largest tensor:
    memory is a few chunk buffers per worker thread, whatever the model."""
    from safetensors.numpy import save_file as save_np

    rng = np.random.default_rng(0)
    base = {f"layers.{i}.weight": rng.standard_normal((512, 1024), dtype=np.float32) for i in range(52)}
    base["embed.weight"] = rng.standard_normal((24576, 1024), dtype=np.float32)  # the largest: 96 MiB
    target = {n: t + np.float32(1e-3) for n, t in base.items()}
    for name, tensors in (("base", base), ("target", target)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(CONFIG))
        half = len(tensors) // 2
        items = list(tensors.items())
        for i, part in enumerate((dict(items[:half]), dict(items[half:]))):
            save_np(part, tmp_path / name / f"model-{i + 1:05d}-of-00002.safetensors")
        weight_map = {n: f"model-{1 + (k >= half):05d}-of-00002.safetensors" for k, n in enumerate(tensors)}
        (tmp_path / name / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    size = sum(t.nbytes for t in target.values())
    largest = base["embed.weight"].nbytes
    del base, target
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss over fork and exec
    script = textwrap.dedent(f"""
        import sys
        from llamantino.release.weightdiff import apply_diff
        def peak():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        before = peak()
        apply_diff({str(tmp_path / 'base')!r}, {str(tmp_path / 'diff')!r}, {str(tmp_path / 'rebuilt')!r})
        print(before, peak(), 'torch' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after, torch_loaded = out.stdout.split()
    grown = int(after) - int(before)
    assert grown < largest and grown < size / 3, (grown, largest, size)
    assert torch_loaded == "False"  # rebuilding needs no deep-learning framework
    assert tensor_hashes(tmp_path / "rebuilt") == tensor_hashes(tmp_path / "target")
