"""Loading models and tokenizers, with the checks users need before a long run starts.

Local folders and hub names load through the same `from_pretrained` calls. Problems
that would otherwise surface hours later (a folder without a config, a tokenizer without
an end-of-sequence token, a max length beyond the model's context) fail here, at once.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.models.weight_files import DTYPES, require_safetensors

log = logging.getLogger(__name__)

ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


# Linear layers of a LLaMA decoder block: the LoRA targets of the paper's QLoRA recipe
# ("every linear layer"): attention q/k/v/o and the MLP gate/up/down projections.
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise LlamantinoError(f"unknown dtype '{name}'; valid: {', '.join(DTYPES)}")
    return getattr(torch, name)


def is_local(name_or_path: str) -> bool:
    path = Path(name_or_path)
    return path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1


def check_model_source(name_or_path: str) -> str:
    """A local model folder must hold config.json, and its weights as safetensors; anything
    else is taken as a hub name."""
    if not name_or_path:
        raise LlamantinoError("no model given (setting 'model')")
    if is_local(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            raise LlamantinoError(f"{path}: model folder not found")
        if not (path / "config.json").is_file():
            raise LlamantinoError(f"{path}: no config.json, not a model folder")
        require_safetensors(path, "model")
        return str(path)
    return name_or_path


def load_config(name_or_path: str):
    from transformers import AutoConfig

    from llamantino.models.gguf_files import config_from_gguf, is_gguf

    if is_gguf(name_or_path):  # a GGUF file (llama.cpp's format) exported by `export gguf`
        return config_from_gguf(name_or_path)
    source = check_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise LlamantinoError(f"{source}: cannot read the model config ({str(exc).splitlines()[0]})") from None


def text_config(config):
    """The language model's part of a config (the config itself for text-only models; the
    `text_config` of multimodal ones such as Gemma 3 4B+, Llama 3.2 Vision, Qwen-VL)."""
    return config.get_text_config(decoder=True)


def context_length(config) -> int:
    return int(getattr(text_config(config), "max_position_embeddings", 0) or 0)


def check_max_length(config, max_length: int, source: str) -> None:
    limit = context_length(config)
    if limit and max_length > limit:
        raise LlamantinoError(f"{source}: max_length {max_length} exceeds the model's context of {limit} tokens")


def load_tokenizer(name_or_path: str, *, tokenizer: str = ""):
    """The model's tokenizer (or `tokenizer` if given), checked for an EOS, with a pad token
    that is no token the model must learn (see `choose_pad_token`)."""
    from transformers import AutoTokenizer

    from llamantino.models.gguf_files import is_gguf, load_gguf_tokenizer

    source = tokenizer or name_or_path
    if is_gguf(source):
        tok = load_gguf_tokenizer(source)
        if tok.eos_token_id is None:
            raise LlamantinoError(f"{source}: the GGUF file names no end-of-sequence (EOS) token")
        if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
            tok.pad_token = choose_pad_token(tok)
        return tok
    if is_local(source):
        path = Path(source).expanduser()
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise LlamantinoError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise LlamantinoError(f"{source}: cannot load the tokenizer ({str(exc).splitlines()[0]})") from None
    if tok.eos_token_id is None:
        raise LlamantinoError(f"{source}: the tokenizer has no end-of-sequence (EOS) token; documents "
                              "cannot be separated")
    pad = choose_pad_token(tok)
    if pad != tok.pad_token:
        if tok.pad_token is not None:
            log.info("%s: pad token %s is also a token the model learns; padding with %s instead", source,
                     tok.pad_token, pad)
        tok.pad_token = pad
    return tok


# Tokens that end a document in pretraining, by family: Llama 3, then Qwen / Phi-3 / GPT-2,
# then LLaMA 2 / Mistral, then Gemma. Instruct tokenizers often name their end-of-turn token
# as `eos_token` (Llama 3's <|eot_id|>, Qwen's <|im_end|>): the base model never saw it
# between documents.
DOCUMENT_END_TOKENS = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>")

# Tokens reserved for padding, by preference: Llama 3.1's, the common names, Qwen's unused
# fill-in-the-middle pad; then Llama 3.0's reserved tokens and <unk> (never produced by
# byte-fallback tokenizers).
PAD_TOKENS = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "[PAD]", "<|fim_pad|>", "<|vision_pad|>")


def special_token_id(tokenizer, token: str) -> int | None:
    """Id of `token` when the tokenizer has it as one token of its own (added or special), else None."""
    ids = tokenizer.convert_tokens_to_ids([token])
    token_id = ids[0] if ids else None
    if token_id is None or token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
        return None
    return token_id


def document_end_token(tokenizer) -> str:
    """The token that ends a document for continued pretraining: the base model's end of text."""
    for token in DOCUMENT_END_TOKENS:
        if special_token_id(tokenizer, token) is not None:
            return token
    return tokenizer.eos_token


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS in front of a text by itself (LLaMA, Llama 3, Gemma do;
    Qwen has none; Phi-3 has one but does not add it). Prompts and documents follow the model."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def choose_pad_token(tokenizer) -> str:
    """A pad token that is none of the tokens the model must learn (EOS, the document end).

    Padded positions never carry loss here, but a saved tokenizer whose pad is the EOS makes
    other trainers mask every EOS out of the labels: the model would never learn to stop.
    The tokenizer's own pad is kept when it is safe; else a reserved pad token; else EOS, with a
    warning."""
    learnt = {tokenizer.eos_token_id, special_token_id(tokenizer, document_end_token(tokenizer))}
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in learnt:
        return tokenizer.pad_token
    vocab = tokenizer.get_vocab()
    reserved = sorted((i, t) for t, i in vocab.items() if t.startswith("<|reserved_special_token_"))
    for token in PAD_TOKENS + tuple(t for _, t in reserved[:1]) + ("<unk>",):
        token_id = special_token_id(tokenizer, token)
        if token_id is not None and token_id not in learnt:
            return token
    log.warning("the tokenizer has no token to pad with other than its EOS %s; padding with it (padded "
                "positions carry no loss here)", tokenizer.eos_token)
    return tokenizer.eos_token


def quantization_config(compute_dtype: str, double_quant: bool = True, quant_type: str = "nf4"):
    """4-bit NF4 with double quantisation (QLoRA), computing in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype))


def c_compiler() -> str | None:
    """The C compiler Triton builds its kernel launchers with, in Triton's own order: $CC, else
    gcc, else clang. Without one every Triton kernel (compiled blocks on a GPU, Liger, flex
    attention) fails at its first call."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("clang")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _loader(config):
    """(Auto class, model class) that load a checkpoint as a language model: its causal LM, or for
    vision-language checkpoints that have none (Qwen-VL) its image-text-to-text model."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING)

    for auto, mapping in ((AutoModelForCausalLM, MODEL_FOR_CAUSAL_LM_MAPPING),
                          (AutoModelForImageTextToText, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING)):
        if type(config) in mapping:
            return auto, mapping[type(config)]
    raise LlamantinoError(f"model type '{config.model_type}' is neither a causal LM nor an image-text-to-text "
                          "model that transformers knows")


def auto_class(config):
    return _loader(config)[0]


def model_class(config):
    return _loader(config)[1]


def resolve_attention(name: str, config, device: str, compute_dtype: str) -> str:
    """`auto`: the fastest attention the model supports that keeps packed documents apart (see
    `attention_choice`); the choice and its reason are logged in one line."""
    if name != "auto":
        return name
    chosen, why = attention_choice(config, device, compute_dtype)
    log.info("attention auto: %s (%s)", chosen, why)
    return chosen


def attention_choice(config, device: str, compute_dtype: str) -> tuple[str, str]:
    """(implementation, why) that `attn_implementation: auto` takes for `config` on `device`.

    On a GPU with 16-bit compute: FlashAttention 3 on Hopper, else FlashAttention 2, each only
    once its kernel has imported and run a tiny forward and backward pass here
    (`probe_flash_attention`: transformers' availability checks read package metadata only, and a
    wheel built for another torch fails at the first step); packed rows are then flattened into
    one varlen sequence whose document boundaries are computed once per batch (qlora.CausalLMLoss).
    Else SDPA (flex attention, which skips cross-document blocks, stays selectable until a GPU
    measurement says it is faster), else flex attention (Gemma 2: SDPA cannot soft-cap attention
    scores; it needs a C compiler for Triton), else eager. On CPU: SDPA, else eager. SDPA and
    eager take the dense block-diagonal mask transformers builds from the restarting position ids;
    flex attention a block-sparse one."""
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    cls = model_class(config)
    gpu = str(device).startswith("cuda")
    notes = []
    if not gpu:
        notes.append("CPU")
    elif not cls._supports_flash_attn:
        notes.append(f"{cls.__name__} has no FlashAttention support")
    elif compute_dtype not in ("bfloat16", "float16"):
        notes.append(f"FlashAttention needs 16-bit compute, this run computes in {compute_dtype}")
    else:
        candidates = [("flash_attention_3", is_flash_attn_3_available() and _is_hopper(device)),
                      ("flash_attention_2", is_flash_attn_2_available())]
        for impl, installed in candidates:
            if not installed:
                continue
            works, problem = probe_flash_attention(impl, device, compute_dtype)
            if works:
                return impl, "its kernel imported and ran a forward and backward pass here"
            notes.append(f"{impl} is installed but does not run here ({problem})")
        if not any(installed for _, installed in candidates):
            notes.append("flash-attn not installed")
    if cls._supports_sdpa:
        return "sdpa", "; ".join(notes)
    if gpu and cls._supports_flex_attn:
        if c_compiler() is not None:
            return "flex_attention", "; ".join(notes + [f"{cls.__name__} has no SDPA support"])
        notes.append("flex attention needs a C compiler for Triton (gcc or clang, or set CC)")
    return "eager", "; ".join(notes + [f"{cls.__name__} has no SDPA support"])


_PROBED: dict = {}


def probe_flash_attention(impl: str, device: str, compute_dtype: str) -> tuple[bool, str]:
    """(works, problem): whether FlashAttention `impl` runs here, tried once per process through
    transformers' own attention function on two packed documents (varlen boundaries, as training
    passes them), forward and backward, against SDPA on each document alone. The kernel is
    imported only here, only when `auto` considers it."""
    key = (impl, str(device), compute_dtype)
    if key not in _PROBED:
        try:
            _PROBED[key] = _run_flash_probe(impl, device, compute_dtype)
        except Exception as exc:  # noqa: BLE001  (an undefined symbol, no kernel for this GPU, ...)
            from llamantino.core.errors import first_line

            _PROBED[key] = (False, first_line(exc))
    return _PROBED[key]


FLASH_MODULES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def _run_flash_probe(impl: str, device: str, compute_dtype: str) -> tuple[bool, str]:
    import importlib
    import types

    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    importlib.import_module(FLASH_MODULES[impl])  # a wheel built for another torch fails here
    dtype = torch_dtype(compute_dtype)
    gen = torch.Generator().manual_seed(0)
    lengths, heads, dim = (9, 15), 2, 64
    q, k, v = (torch.randn(1, heads, sum(lengths), dim, generator=gen).to(device, dtype).requires_grad_()
               for _ in range(3))
    bounds = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32, device=device)
    module = torch.nn.Module()
    module.is_causal, module.config = True, types.SimpleNamespace(_attn_implementation=impl)
    out, _ = ALL_ATTENTION_FUNCTIONS[impl](module, q, k, v, None, scaling=dim ** -0.5, cu_seq_lens_q=bounds,
                                          cu_seq_lens_k=bounds, max_length_q=sum(lengths),
                                          max_length_k=sum(lengths))
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    reference = []  # each document alone, through SDPA, in float32
    for a, b in ((0, lengths[0]), (lengths[0], sum(lengths))):
        parts = [t.detach()[:, :, a:b].float().requires_grad_() for t in (q, k, v)]
        ref = torch.nn.functional.scaled_dot_product_attention(*parts, is_causal=True)
        ref.transpose(1, 2).square().sum().backward()
        reference.append((ref.transpose(1, 2), [p.grad for p in parts]))
    expected = torch.cat([r[0] for r in reference], dim=1)
    error = float((out.float() - expected).abs().max())
    grad_error = max(float((g.float() - torch.cat([r[1][i] for r in reference], dim=2)).abs().max())
                     for i, g in enumerate(grads))
    if error > 5e-2 or grad_error > 5e-1 or not all(torch.isfinite(g).all() for g in grads):
        return False, f"its output differs from SDPA's by {error:.2g}, its gradients by {grad_error:.2g}"
    return True, ""


def _is_hopper(device) -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9


def load_causal_lm(name_or_path: str, *, dtype: str = "float32", load_in_4bit: bool = False,
                   compute_dtype: str = "float32", device: str | None = None,
                   attn_implementation: str | None = "auto", quant_type: str = "nf4", double_quant: bool = True,
                   experts_4bit: bool = True):
    """Load a causal LM in full precision or 4-bit (QLoRA) on one device; `attn_implementation`
    `auto` resolves as `resolve_attention` says. In 4-bit, a mixture of experts' fused experts are
    quantized too (`moe4bit`), unless `experts_4bit` is off (they then stay in `compute_dtype`).
    A path to a `.gguf` file loads that file (dequantised to `dtype`; see models/gguf_files.py)."""
    from llamantino.models.gguf_files import is_gguf, load_gguf_model

    if is_gguf(name_or_path):
        if load_in_4bit:
            raise LlamantinoError(f"{name_or_path}: a GGUF file loads dequantised; 4-bit loading is for model folders")
        model = load_gguf_model(name_or_path, dtype=dtype, device=device or default_device())
        return model
    source = check_model_source(name_or_path)
    config = load_config(source)  # fails early and clearly on a broken folder
    device = device or default_device()
    kwargs = {"device_map": {"": device} if device != "cpu" else "cpu"}
    if attn_implementation:
        kwargs["attn_implementation"] = resolve_attention(attn_implementation, config, device,
                                                          compute_dtype if load_in_4bit else dtype)
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(compute_dtype, double_quant, quant_type)
        kwargs["dtype"] = torch_dtype(compute_dtype)
        if experts_4bit and is_mixture_of_experts(config):  # says, before loading, what stays in full precision
            import torch

            from llamantino.models.moe4bit import check_expert_layout

            with torch.device("meta"):
                check_expert_layout(auto_class(config).from_config(config), config.model_type,
                                    torch_dtype(compute_dtype))
    else:
        kwargs["dtype"] = torch_dtype(dtype)
    try:
        model = auto_class(config).from_pretrained(source, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise LlamantinoError(f"{source}: cannot load the model ({str(exc).splitlines()[0]})") from None
    plain_4bit_on_every_cpu(model)
    if load_in_4bit and experts_4bit and is_mixture_of_experts(config):
        # bitsandbytes quantizes nn.Linear only; the fused 3-D experts are quantized here.
        from llamantino.models.moe4bit import quantize_experts

        n = quantize_experts(model, quant_type=quant_type, double_quant=double_quant)
        log.info("%s: %.1fM expert weights held in 4-bit %s", type(model).__name__, n / 1e6, quant_type)
    return model


MOE_CONFIG_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def is_mixture_of_experts(config) -> bool:
    """Whether the language model of `config` routes tokens to experts (its config counts them)."""
    text = text_config(config)
    return any(isinstance(getattr(text, name, None), int) and getattr(text, name) > 1 for name in MOE_CONFIG_FIELDS)


def plain_4bit_on_every_cpu(model) -> None:
    """Turn off bitsandbytes' AVX512-BF16 CPU path on every 4-bit layer of `model`.

    On a CPU with AVX512-BF16, `Linear4bit` repacks its weight in place the first time it runs
    in eval mode without gradients (the head check at set-up, held-out evaluation, `eval bpb`,
    generation), and every later call, training included, goes through that packed kernel: no
    gradient reaches the layer's input, so the LoRA adapters below it train wrong without an
    error; a layer whose output size is not a multiple of 32, or whose input size is not one of
    the 64-wide quantization blocks, raises; and the kernel rounds the scales to bfloat16, so
    even pure inference gives other numbers than other CPUs. The packing cannot be undone
    exactly (its inverse re-quantizes the rounded scales), so the flag goes off here, at load,
    before any forward. Off for inference too: one model serves training and held-out
    evaluation alike, and every CPU then computes the same figures."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def language_model(model):
    """The text decoder (embeddings and decoder blocks) of a causal LM or of a vision-language model."""
    inner = getattr(model, "model", model)
    for name in ("language_model", "text_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    return inner


def decoder_blocks(model) -> list:
    """The language model's decoder blocks (its `layers`), in order: what LoRA targets, what is
    compiled block by block, what FSDP shards one by one. The one place that finds them."""
    layers = getattr(language_model(model), "layers", None)
    if layers is None:
        raise LlamantinoError(f"{type(model).__name__}: no decoder blocks ('layers') found: unsupported architecture")
    return list(layers)


def lora_targets(model) -> list[str] | str:
    """The linear layers inside the language model's decoder blocks, as LoRA targets: their names
    (q_proj, ..., down_proj), or, when a linear layer elsewhere has one of those names (a vision
    tower's q_proj), a pattern that matches them in the decoder blocks only. A mixture of experts'
    router is never one of them (it stays frozen unless trained whole: `moe_layout`)."""
    import re

    import torch

    inside = {id(m) for block in decoder_blocks(model) for m in block.modules()}
    routers = {id(m) for block in decoder_blocks(model) for m in _routers(block).values()}
    found, elsewhere = set(), set()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and id(module) not in routers:
            (found if id(module) in inside else elsewhere).add(name.rsplit(".", 1)[-1])
    if not found:
        raise LlamantinoError("no linear layers found inside the decoder blocks: unsupported architecture")
    if not found & elsewhere:
        return sorted(found)
    text = language_model(model)
    prefix = next(name for name, module in model.named_modules() if module is text)
    return rf"{re.escape(prefix)}\.layers\.\d+\..*\b({'|'.join(sorted(found))})"


# Mixtures of experts. transformers keeps a MoE layer's experts in a module named `experts`
# (Mixtral, Qwen2/3-MoE, gpt-oss, OLMoE, Granite MoE, DeepSeek, ...) and its router beside them,
# named `gate` or `router`. Since transformers 5 the experts are fused 3-D parameters
# (`gate_up_proj`, `down_proj`: experts x out x in, or experts x in x out where the experts module
# says `is_transposed`), which LoRA reaches through PEFT's `target_parameters`; experts kept as
# separate MLPs have linear layers, which `lora_targets` already names.
EXPERTS = "experts"
ROUTERS = ("gate", "router")


def _routers(block) -> dict:
    """{name within the block: module} of the routers beside the block's experts."""
    import torch

    found = {}
    for name, module in block.named_modules():
        if name.rsplit(".", 1)[-1] != EXPERTS:
            continue
        parent = name.rpartition(".")[0]
        for router in ROUTERS:
            child = getattr(block.get_submodule(parent) if parent else block, router, None)
            if isinstance(child, torch.nn.Module):
                found[f"{parent}.{router}" if parent else router] = child
    return found


def moe_layout(model) -> dict:
    """What a mixture of experts' decoder blocks hold: {"parameters": the fused expert weights
    as names within a block ("mlp.experts.gate_up_proj"), "routers": the routers' names within a
    block ("mlp.gate"), "unknown": experts modules with neither fused weights nor linear layers}.
    All empty for a dense model. Names within a block are what PEFT matches (as name suffixes)."""
    import torch

    parameters, routers, unknown = set(), set(), set()
    for block in decoder_blocks(model):
        routers.update(_routers(block))
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] != EXPERTS:
                continue
            fused = [p for p, t in module.named_parameters(recurse=False) if t.ndim == 3]
            fused += getattr(module, "quantized_parameters", [])  # 4-bit experts (moe4bit): packed, same names
            parameters.update(f"{name}.{p}" for p in fused)
            linear = any(isinstance(m, torch.nn.Linear) or type(m).__name__ == "Linear4bit" for m in module.modules())
            if not fused and not linear:
                unknown.add(f"{name} ({type(module).__name__})")
    return {"parameters": sorted(parameters), "routers": sorted(routers), "unknown": sorted(unknown)}


def split_lora_targets(model, names: list[str]) -> tuple[list[str], list[str]]:
    """A `lora_targets` list as (module names, parameter names): an entry naming a fused expert
    weight (by its name within a block, or its end: "experts.down_proj") is a parameter target,
    and a module target too where a linear layer in the blocks has that name (a dense or shared
    expert's down_proj beside fused experts)."""
    import torch

    fused = moe_layout(model)["parameters"]
    linear = {name.rsplit(".", 1)[-1] for block in decoder_blocks(model) for name, m in block.named_modules()
              if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Linear4bit"}
    parameters = [n for n in names if any(p == n or p.endswith(f".{n}") for p in fused)]
    return [n for n in names if n not in parameters or n in linear], parameters


def freeze_outside_language_model(model) -> int:
    """Full fine-tuning of a vision-language model trains the language model and its output layer
    only: the vision tower and projector are frozen. Returns the number of parameters frozen."""
    keep = {id(p) for p in language_model(model).parameters()}
    keep |= {id(p) for p in model.get_output_embeddings().parameters()}
    frozen = 0
    for param in model.parameters():
        if id(param) not in keep:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def check_adapter(adapter) -> dict:
    """A PEFT adapter folder from anyone, checked before peft reads it: adapter_config.json a
    JSON object, and adapter_model.safetensors (when there) a file whose header reads and whose
    size is the one the header announces. One line otherwise; returns the config."""
    from llamantino.core.fileio import read_json_object
    from llamantino.models.weight_files import WeightFile

    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise LlamantinoError(f"{adapter}: no adapter_config.json, not a PEFT adapter folder")
    config = read_json_object(path, "adapter config")
    weights = Path(adapter) / "adapter_model.safetensors"
    if weights.is_file():
        WeightFile(weights)  # a truncated or damaged file: one line naming it
    return config


def load_with_adapter(model_path: str, adapter: str = "", *, dtype: str = "float32", device: str | None = None,
                      merge: bool = False):
    """Model (+ optional PEFT adapter) for evaluation and generation."""
    if adapter:
        require_safetensors(adapter, "adapter")  # a pickle is refused before anything parses it
        check_adapter(adapter)  # before the model: a bad adapter costs no loading time
    model = load_causal_lm(model_path, dtype=dtype, device=device)
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (RuntimeError, ValueError, KeyError) as exc:  # size mismatch, missing modules: another base
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            why = next((line for line in lines if "size mismatch" in line), lines[0])
            raise LlamantinoError(f"{adapter}: this adapter does not fit the model {model_path} ({why[:300]})") \
                from None
        if merge:  # the merge `llamantino merge` does: the same bits on every machine
            from llamantino.models.merge import fold_lora

            model = fold_lora(model, adapter)[0]
    model.eval()
    return model
