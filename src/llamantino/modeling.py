"""Loading models and tokenizers, with the checks users need before a long run starts.

Local folders and hub names load through the same `from_pretrained` calls. Problems
that would otherwise surface hours later (a folder without a config, a tokenizer without
an end-of-sequence token, a max length beyond the model's context) fail here, at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llamantino.errors import LlamantinoError
from llamantino.train_settings import DTYPES

log = logging.getLogger(__name__)



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
    """A local model folder must hold config.json; anything else is taken as a hub name."""
    if not name_or_path:
        raise LlamantinoError("no model given (setting 'model')")
    if is_local(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            raise LlamantinoError(f"{path}: model folder not found")
        if not (path / "config.json").is_file():
            raise LlamantinoError(f"{path}: no config.json, not a model folder")
        return str(path)
    return name_or_path


def load_config(name_or_path: str):
    from transformers import AutoConfig

    source = check_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise LlamantinoError(f"{source}: cannot read the model config ({str(exc).splitlines()[0]})") from None


def context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 0)


def check_max_length(config, max_length: int, source: str) -> None:
    limit = context_length(config)
    if limit and max_length > limit:
        raise LlamantinoError(f"{source}: max_length {max_length} exceeds the model's context of {limit} tokens")


def load_tokenizer(name_or_path: str, *, tokenizer: str = ""):
    """The model's tokenizer (or `tokenizer` if given), checked for BOS/EOS.

    LLaMA 2 has no padding token; batches here are packed or padded with a mask, so the
    pad id only needs to exist: it is set to the EOS id when missing (and never trained).
    """
    from transformers import AutoTokenizer

    source = tokenizer or name_or_path
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
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(compute_dtype: str, double_quant: bool = True, quant_type: str = "nf4"):
    """4-bit NF4 with double quantisation (QLoRA), computing in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(name_or_path: str, *, dtype: str = "float32", load_in_4bit: bool = False,
                   compute_dtype: str = "float32", device: str | None = None,
                   attn_implementation: str | None = None, quant_type: str = "nf4", double_quant: bool = True):
    """Load a causal LM in full precision or 4-bit (QLoRA) on one device."""
    from transformers import AutoModelForCausalLM

    source = check_model_source(name_or_path)
    load_config(source)  # fails early and clearly on a broken folder
    device = device or default_device()
    kwargs = {"device_map": {"": device} if device != "cpu" else "cpu"}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(compute_dtype, double_quant, quant_type)
        kwargs["dtype"] = torch_dtype(compute_dtype)
    else:
        kwargs["dtype"] = torch_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise LlamantinoError(f"{source}: cannot load the model ({str(exc).splitlines()[0]})") from None
    return model


def lora_targets(model) -> list[str]:
    """Names (suffixes) of the linear layers inside the decoder blocks, as LoRA targets."""
    import torch

    found = set()
    for name, module in model.named_modules():
        if ".layers." not in name:
            continue
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear:
            found.add(name.rsplit(".", 1)[-1])
    if not found:
        raise LlamantinoError("no linear layers found inside decoder blocks ('.layers.'): unsupported architecture")
    return sorted(found)


def load_with_adapter(model_path: str, adapter: str = "", *, dtype: str = "float32", device: str | None = None,
                      merge: bool = False):
    """Model (+ optional PEFT adapter) for evaluation and generation."""
    model = load_causal_lm(model_path, dtype=dtype, device=device)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise LlamantinoError(f"{adapter}: no adapter_config.json, not a PEFT adapter folder")
        model = PeftModel.from_pretrained(model, adapter)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model
