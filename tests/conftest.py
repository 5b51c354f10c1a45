"""Shared fixtures: a tiny LLaMA and its tokenizer, and a tiny model of each of today's families
(Llama 3, Mistral, Qwen 2 and 3, Gemma 2 and 3, Phi-3, and a Gemma 3 vision-language one), built
offline and saved to disk once per test session, so tests exercise the real `from_pretrained`
loading code."""

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


@pytest.fixture(scope="session", autouse=True)
def avx512bf16_cpu():
    """Every 4-bit layer behaves as on a CPU with AVX512-BF16 (Sapphire Rapids, Zen 4 and later),
    whatever CPU runs the tests: bitsandbytes then repacks a `Linear4bit` for its bfloat16 CPU
    kernel at the layer's first eval-mode forward without gradients. `Linear4bit.__init__` reads
    the CPU's support through the `has_avx512bf16` name its module imported, the one seam there
    is (tests/models/test_cpu_kernels.py compares with a CPU without it)."""
    from bitsandbytes.nn import Linear4bit, modules

    if not hasattr(modules, "has_avx512bf16"):  # a release before the packed CPU path: nothing to force
        assert not hasattr(Linear4bit(64, 32, bias=False), "support_avx512bf16_for_cpu")
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modules, "has_avx512bf16", lambda: True)
        # Fails loudly if a bitsandbytes release reads the flag elsewhere (the patch would do nothing).
        assert Linear4bit(64, 32, bias=False).support_avx512bf16_for_cpu is True
        yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from llamantino.demo.demo_base import build_tokenizer

    return build_tokenizer(TOKENIZER_TEXT, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A random 2-layer LLaMA (hidden 64) saved with save_pretrained, with its tokenizer."""
    from llamantino.demo.demo_base import build_model

    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_model(tiny_tokenizer, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        max_position_embeddings=512, seed=0)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------
# Today's families: a tiny random model of each, with its real chat template and special
# tokens (see tests/helpers/families.py), saved once per session.

from helpers.families import FAMILIES  # noqa: E402


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """Folder of a family's tiny model by name, built on first use (for tests about one family)."""
    from helpers.families import save_family

    return built_on_first_use(save_family, tmp_path_factory)


def built_on_first_use(save, tmp_path_factory):
    """name -> folder, saved by `save(name, folder)` the first time a test asks for it."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = save(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def tiny_family(request, family_dirs):
    """(family, folder) for each of gemma2, gemma3, llama3, mistral, phi3, qwen2, qwen3."""
    return FAMILIES[request.param], family_dirs(request.param)


@pytest.fixture(scope="session")
def tiny_gemma3_vision(tmp_path_factory):
    """A tiny Gemma 3 vision-language checkpoint (language model + SigLIP tower)."""
    from helpers.families import save_gemma3_vision

    return save_gemma3_vision(tmp_path_factory.mktemp("gemma3-vision"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is several times faster than two on a busy 2-core machine
    (modules that run many take it with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="session")
def make_random_adapter(tiny_model_dir):
    """make(folder, seed): a LoRA adapter of the tiny LLaMA with random (non-zero) weights on
    q_proj and v_proj, saved in `folder`; the adapted model differs from the base."""

    def make(folder, seed: int):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        model.save_pretrained(folder)
        return folder

    return make


# ---------------------------------------------------------------------------------------
# Mixtures of experts: tiny Mixtral, Qwen3-MoE and gpt-oss (see tests/helpers/moe_families.py).

from helpers.moe_families import MOE_FAMILIES  # noqa: E402


@pytest.fixture(scope="session")
def moe_family_dirs(tmp_path_factory):
    """Folder of a MoE family's tiny model by name, built on first use."""
    from helpers.moe_families import save_moe_family

    return built_on_first_use(save_moe_family, tmp_path_factory)


@pytest.fixture(scope="session", params=sorted(MOE_FAMILIES))
def tiny_moe_family(request, moe_family_dirs):
    """(family, folder) for each of gpt_oss, mixtral, qwen3_moe."""
    return MOE_FAMILIES[request.param], moe_family_dirs(request.param)
