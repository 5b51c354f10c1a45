"""Loading a GGUF file (llama.cpp's format) as a transformers model and tokenizer, so that `eval
bpb` and the tests measure the exported file itself.

transformers reads GGUF with `from_pretrained(folder, gguf_file=NAME)`, but builds the config
from a subset of the metadata and takes its own defaults for the rest: a Qwen 3 file gets a head
size of 128 whatever the file says, Gemma 2 and 3 lose the query scaling, the sliding-window
pattern and the local RoPE base, Phi-3 its sliding window, Llama 3 its RoPE scaling. Here the
config is completed from the metadata llama.cpp itself runs the model with (`config_from_gguf`),
and a file carrying Llama 3's `rope_freqs` factors gets them as llama.cpp applies them: the
rotary embedding's inverse frequencies divided by the factors.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.core.errors import LlamantinoError, first_line


def is_gguf(path) -> bool:
    return str(path).endswith(".gguf") and Path(path).is_file()


def read_metadata(path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (shape as numpy has it, type)) of a GGUF file;
    token lists are left out."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 (a damaged or foreign file: one line)
        raise LlamantinoError(f"{path}: not a readable GGUF file ({first_line(exc)})") from None
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "scores", "token_type")):
            continue
        metadata[key] = field.contents()
    tensors = {t.name: (list(reversed([int(d) for d in t.shape])), t.tensor_type) for t in reader.tensors}
    return metadata, tensors


def rope_freqs(path):
    """Llama 3's per-frequency RoPE divisors stored in the file, or None."""
    from gguf import GGUFReader

    for tensor in GGUFReader(path).tensors:
        if tensor.name == "rope_freqs.weight":
            import numpy as np

            return np.array(tensor.data, dtype=np.float32)
    return None


def config_from_gguf(path):
    """The transformers config of a GGUF file: transformers' own reading, completed from the
    metadata llama.cpp uses (see the module's docstring)."""
    from transformers import AutoConfig

    path = Path(path)
    metadata, tensors = read_metadata(path)
    arch = metadata.get("general.architecture")
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise LlamantinoError(f"{path}: transformers cannot read this GGUF file ({first_line(exc)})") from None

    if arch == "llama" and metadata.get("llama.expert_count"):
        raise LlamantinoError(f"{path}: a mixture of experts in llama.cpp's `llama` architecture (Mixtral); "
                              "transformers cannot read it back from GGUF (llama.cpp and Ollama run it)")
    if arch == "llama" and config.model_type != "llama":
        # transformers takes a `llama` file whose general.name is "mistral" for Mistral, whose
        # tensors it then cannot name; llama.cpp runs it as llama (no sliding window) and so do we
        from transformers import LlamaConfig

        values = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "sliding_window", "architectures")}
        config = LlamaConfig(**values)

    def get(key, default=None):
        return metadata.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    hidden = get("embedding_length")
    head_dim = get("attention.key_length") or (hidden // heads if heads and hidden else None)
    if head_dim:
        config.head_dim = int(head_dim)
    if get("attention.sliding_window") is not None and hasattr(config, "sliding_window"):
        config.sliding_window = int(get("attention.sliding_window"))
    rope = dict(getattr(config, "rope_parameters", None) or {})
    scaling = get("rope.scaling.type")
    if scaling in ("linear", "yarn"):
        rope.update(rope_type=scaling, factor=float(get("rope.scaling.factor")))
        if scaling == "yarn":
            rope["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
    if get("expert_feed_forward_length"):
        config.moe_intermediate_size = int(get("expert_feed_forward_length"))
    if arch in ("gemma2", "gemma3"):
        # llama.cpp scales queries by 1/sqrt(head size), except in the 27B models (46 and 62
        # layers), which use hidden size / heads: transformers' query_pre_attn_scalar.
        big = get("block_count") in ((46,) if arch == "gemma2" else (62,))
        config.query_pre_attn_scalar = hidden // heads if big else int(head_dim)
        config.attn_logit_softcapping = get("attn_logit_softcapping")
        config.final_logit_softcapping = get("final_logit_softcapping")
    if arch == "gemma3":
        pattern = get("attention.sliding_window_pattern")
        if pattern is not None:
            config.layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
        full = {"rope_type": rope.get("rope_type", "default"), "rope_theta": float(get("rope.freq_base", 1e6))}
        if "factor" in rope:
            full["factor"] = rope["factor"]
        local = {"rope_type": "default", "rope_theta": float(get("rope.freq_base_swa", 10000.0))}
        config.rope_parameters = {"full_attention": full, "sliding_attention": local}
    else:
        config.rope_parameters = rope
    if arch == "phi3" and get("rope.scaling.original_context_length"):
        config.original_max_position_embeddings = int(get("rope.scaling.original_context_length"))
    config.tie_word_embeddings = "output.weight" not in tensors
    return config


def load_gguf_model(path, *, dtype: str = "float32", device: str = "cpu"):
    """The GGUF file at `path` as a transformers causal LM (weights dequantised to `dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    config = config_from_gguf(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                     dtype=getattr(torch, dtype), device_map=device)
    except (OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise LlamantinoError(f"{path}: cannot load the GGUF model ({first_line(exc)})") from None
    factors = rope_freqs(path)
    if factors is not None:
        # llama.cpp divides each rotary frequency by its factor; the rotary embedding's inverse
        # frequencies are the one place transformers keeps them.
        rotary = model.model.rotary_emb
        scaled = rotary.inv_freq / torch.from_numpy(factors).to(rotary.inv_freq)
        rotary.inv_freq = scaled
        rotary.original_inv_freq = scaled.clone()
    model.eval()
    return model


def load_gguf_tokenizer(path):
    from transformers import AutoTokenizer

    path = Path(path)
    try:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise LlamantinoError(f"{path}: cannot read the GGUF tokenizer ({first_line(exc)})") from None
