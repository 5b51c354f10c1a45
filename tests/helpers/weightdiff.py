"""Random LLaMA-shaped tensors and a checkpoint writer (one file or shards) for the
weight-difference tests."""

import json

import torch
from safetensors.torch import save_file

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16,
          "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "num_key_value_heads": 2, "vocab_size": 40, "tie_word_embeddings": False}


def write_checkpoint(folder, tensors, config=None, shards=1, extra_files=None):
    """A model folder as save_pretrained writes it: config.json plus one safetensors file,
    or `shards` files and an index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    for name, text in (extra_files or {"tokenizer_config.json": "{}"}).items():
        (folder / name).write_text(text)
    names = list(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n")
    return folder


def random_tensors(seed, dtype=torch.float32, vocab=40):
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab, 16), "lm_head.weight": (vocab, 16), "model.norm.weight": (16,)}
    for layer in range(2):
        shapes[f"model.layers.{layer}.self_attn.q_proj.weight"] = (16, 16)
        shapes[f"model.layers.{layer}.mlp.up_proj.weight"] = (32, 16)
    return {n: (torch.randn(s, generator=g) * 0.02).to(dtype) for n, s in shapes.items()}
