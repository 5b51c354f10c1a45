"""Training the embeddings with LoRA: only the new rows of an extended vocabulary, or the whole
matrices, each at its own learning rate; carried through merge, a weight difference and a
rebuild, bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamantino.cli import main
from llamantino.core.errors import LlamantinoError

from helpers.adapt import adapt_args, corpus
from helpers.vocab import extend


def weights(folder) -> dict:
    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


@pytest.fixture(scope="module")
def extended(tmp_path_factory, tiny_model_dir):
    """The tiny model with 40 Italian tokens added by `vocab extend`, and its new ids."""
    out = tmp_path_factory.mktemp("embeddings") / "extended"
    _, report = extend(tiny_model_dir, out, add_tokens=40)
    return out, [t["id"] for t in report["new_tokens"]]


def adapt_embeddings(tmp_path, model, mode, *extra):
    out = tmp_path / f"adapt-{mode}"
    args = adapt_args(model, corpus(tmp_path), out, "--train-embeddings", mode, "--no-load-in-4bit",
                      "--compute-dtype", "float32", *extra)
    assert main(args) == 0
    return out


def merged(tmp_path, base, adapter, name):
    from llamantino.models.merge import merge_adapter

    merge_adapter(base, adapter, tmp_path / name, dtype="float32")
    return weights(tmp_path / name)


def test_new_rows_train_and_old_rows_stay_bit_for_bit(tmp_path, extended):
    model, new_ids = extended
    run = adapt_embeddings(tmp_path, model, "new")
    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    hidden = weights(model)["model.embed_tokens.weight"].shape[1]
    assert metrics["train_embeddings"] == "new"
    assert metrics["embedding_parameters"] == 2 * len(new_ids) * hidden  # input and (untied) output rows
    before, after = weights(model), merged(tmp_path, model, run, "merged")
    old = torch.ones(before["model.embed_tokens.weight"].shape[0], dtype=torch.bool)
    old[new_ids] = False
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(after[key][old], before[key][old]), key
        assert not torch.equal(after[key][~old], before[key][~old]), key


def test_whole_matrices_train_at_their_own_rate(tmp_path, extended):
    from llamantino.train.qlora import parameter_groups

    model, _ = extended
    run = adapt_embeddings(tmp_path, model, "all", "--embedding-learning-rate", "5e-4")
    before, after = weights(model), merged(tmp_path, model, run, "merged")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        changed = (after[key] != before[key]).any(dim=1).float().mean().item()
        assert changed > 0.5, key  # the rows of every token seen in training moved

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_A = torch.nn.Linear(2, 2)
            self.modules_to_save = torch.nn.Linear(2, 2)

    groups = parameter_groups(Toy(), 1e-3, 0.0)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]  # a tenth of the LoRA rate by default
    assert [len(g["params"]) for g in groups] == [2, 2]


def test_an_extended_vocabulary_rebuilds_bit_for_bit(tmp_path, tiny_model_dir, extended):
    """base -> (weight difference: the extension) -> adapter with trained rows -> merge, the
    release chain of an extended model, equals the model merged directly."""
    from llamantino.release.build import build_chain
    from llamantino.release.weightdiff import make_diff

    model, new_ids = extended
    run = adapt_embeddings(tmp_path, model, "new")
    reference = merged(tmp_path, model, run, "reference")
    make_diff(tiny_model_dir, model, tmp_path / "vocab-diff")
    manifest = json.loads((tmp_path / "vocab-diff" / "weight_diff.json").read_text())
    assert "rows" in json.dumps(manifest)  # the grown vocabulary is recorded
    build_chain(tiny_model_dir, [f"diff:{tmp_path / 'vocab-diff'}", f"adapter:{run}", "merge"],
                tmp_path / "rebuilt", dtype="float32", verify=False)  # fresh local folders, no SHA256SUMS
    rebuilt = weights(tmp_path / "rebuilt")
    assert rebuilt.keys() == reference.keys()
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)


def test_new_needs_an_extended_model_and_quantized_embeddings_are_refused(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    args = adapt_args(tiny_model_dir, corpus(tmp_path), out, "--train-embeddings", "new")
    assert main(args) == 2
    assert "needs a model made by `llamantino vocab extend`" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()

    from llamantino.train.qlora import embedding_options

    class Quantized(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(4, 2)
            self.embed.weight = torch.nn.Parameter(torch.zeros(4, 2, dtype=torch.uint8), requires_grad=False)

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.embed

    with pytest.raises(LlamantinoError, match="input embeddings are quantized"):
        embedding_options("all", Quantized(), "m")
