"""4-bit models give the same numbers on every CPU: training (held-out evaluation in the middle,
interrupted and resumed), `eval bpb`, `eval lm-eval --load-in-4bit` and generation are bit-for-bit
the same whether or not bitsandbytes takes its AVX512-BF16 path, for layer sizes that are and are
not multiples of 32. The whole suite runs as on such a CPU (tests/conftest.py); here each test
also runs as on a CPU without it, and compares."""

import contextlib
import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamantino.cli import main

from helpers.adapt import adapt_args, corpus
from helpers.heldout import IT


pytestmark = pytest.mark.usefixtures("one_thread")

# MLP widths: 128 fits bitsandbytes' packed CPU layout, where the packed path trained wrong
# without an error; 96 (not a multiple of its 64-wide quantization blocks) and 100 (nor of its
# 32-row blocks) made it raise.
SIZES = [128, 96, 100]


@contextlib.contextmanager
def cpu_without_avx512bf16():
    """4-bit layers built inside behave as on a CPU without AVX512-BF16 (see tests/conftest.py)."""
    from bitsandbytes.nn import Linear4bit, modules

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modules, "has_avx512bf16", lambda: False)
        assert not Linear4bit(64, 32, bias=False).support_avx512bf16_for_cpu
        yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tokenizer):
    """tiny_llama(intermediate): the folder of a 2-layer LLaMA (hidden 64) whose MLP has
    `intermediate` units."""
    from llamantino.demo.demo_base import build_model

    built = {}

    def get(intermediate: int):
        if intermediate not in built:
            path = tmp_path_factory.mktemp(f"tiny-llama-{intermediate}")
            build_model(tiny_tokenizer, hidden_size=64, intermediate_size=intermediate, num_layers=2, num_heads=4,
                        max_position_embeddings=512, seed=0).save_pretrained(path)
            tiny_tokenizer.save_pretrained(path)
            built[intermediate] = path
        return built[intermediate]

    return get


@pytest.fixture
def heldout_it(tmp_path):
    path = tmp_path / "it.txt"
    path.write_text("\n\n".join(IT) + "\n", encoding="utf-8")
    return path


def assert_same_adapter(run_a: Path, run_b: Path):
    a = load_file(str(run_a / "adapter_model.safetensors"))
    b = load_file(str(run_b / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def figures(run: Path) -> list[tuple]:
    """Per logged step: the loss and held-out bits per byte (times and throughput vary)."""
    with open(run / "metrics.csv", newline="") as handle:
        return [(r["step"], r["loss"], r.get("eval_it_bpb", "")) for r in csv.DictReader(handle)]


@pytest.mark.parametrize("intermediate", SIZES)
def test_adapt_with_heldout_eval_trains_the_same_adapter_on_every_cpu(tmp_path, tiny_llama, heldout_it,
                                                                       intermediate):
    model, data = tiny_llama(intermediate), corpus(tmp_path)
    evaluated = ("--eval-data", f"it={heldout_it}", "--eval-steps", "2")
    assert main(adapt_args(model, data, tmp_path / "avx512bf16", *evaluated)) == 0
    with cpu_without_avx512bf16():
        assert main(adapt_args(model, data, tmp_path / "plain", *evaluated)) == 0
    assert_same_adapter(tmp_path / "avx512bf16", tmp_path / "plain")
    steps = figures(tmp_path / "plain")
    assert [s[0] for s in steps if s[2]] == ["2", "4", "6"]
    assert figures(tmp_path / "avx512bf16") == steps


def test_interrupted_run_with_heldout_eval_equals_the_plain_run(tmp_path, tiny_model_dir, heldout_it):
    data = corpus(tmp_path)
    with cpu_without_avx512bf16():
        assert main(adapt_args(tiny_model_dir, data, tmp_path / "plain")) == 0
    evaluated = ("--eval-data", f"it={heldout_it}", "--eval-steps", "2")
    # Held-out evaluation in the middle of training, then training on.
    assert main(adapt_args(tiny_model_dir, data, tmp_path / "evaluated", *evaluated)) == 0
    assert_same_adapter(tmp_path / "plain", tmp_path / "evaluated")
    # The same, stopped after step 3 (evaluated at step 2) and resumed in a new model.
    parts = tmp_path / "parts"
    assert main(adapt_args(tiny_model_dir, data, parts, *evaluated, "--stop-after-steps", "3")) == 3
    assert not (parts / "manifest.json").exists()
    assert main(adapt_args(tiny_model_dir, data, parts, *evaluated, "--resume")) == 0
    assert_same_adapter(tmp_path / "plain", parts)
    assert figures(parts) == figures(tmp_path / "evaluated")


@pytest.mark.parametrize("intermediate", SIZES)
def test_4bit_inference_gives_the_same_numbers_on_every_cpu(tmp_path, tiny_llama, tiny_tokenizer, heldout_it,
                                                            capsys, intermediate):
    """`eval bpb` and generation on a saved 4-bit checkpoint, and `eval lm-eval --load-in-4bit`'s
    model (quantized at load), with and without the AVX512-BF16 path."""
    from llamantino.evaluate.harness import Config, load_model
    from llamantino.models.generate import generate
    from llamantino.models.modeling import load_causal_lm, load_with_adapter

    source = tiny_llama(intermediate)
    quantized = tmp_path / "nf4"
    load_causal_lm(str(source), load_in_4bit=True).save_pretrained(quantized)
    tiny_tokenizer.save_pretrained(quantized)
    prompts = ["Il gatto dorme sul divano", "Roma, Milano e"]
    ids = torch.tensor([tiny_tokenizer("Domani andremo al mare con gli amici")["input_ids"]])

    def numbers():
        capsys.readouterr()
        assert main(["eval", "bpb", str(heldout_it), "--model", str(quantized), "--max-length", "64"]) == 0
        bpb = json.loads(capsys.readouterr().out)["bits_per_byte"]
        model = load_with_adapter(str(quantized))
        answers = generate(model, tiny_tokenizer, prompts, max_new_tokens=8)
        with torch.no_grad():
            saved = model(input_ids=ids).logits
            harness_model, _ = load_model(Config(model=str(source), load_in_4bit=True))
            at_load = harness_model(input_ids=ids).logits
        return bpb, answers, saved, at_load

    avx512bf16 = numbers()
    with cpu_without_avx512bf16():
        plain = numbers()
    assert avx512bf16[:2] == plain[:2]
    assert torch.equal(avx512bf16[2], plain[2]) and torch.equal(avx512bf16[3], plain[3])


def test_every_4bit_layer_loads_without_the_packed_path(tiny_llama):
    from bitsandbytes.nn import Linear4bit

    from llamantino.models.modeling import load_causal_lm

    model = load_causal_lm(str(tiny_llama(100)), load_in_4bit=True)
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 2 * 7
    assert not any(layer.support_avx512bf16_for_cpu for layer in layers)
    # Held-out evaluation puts the model in eval mode: nothing is repacked, and training after it
    # still sends gradients to the layers' inputs.
    model.eval()
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        model(input_ids=ids)
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers)
    model.train()
    hidden = model.get_input_embeddings()(ids).detach().requires_grad_()
    model(inputs_embeds=hidden).logits.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
