"""`llamantino merge`: fold a LoRA adapter into its base model and save a plain model.

The base is loaded in 16 or 32 bit; a quantized (4-bit) base is refused, because merging
into it is lossy (logits off by ~3e-3, against ~3e-7 in float32). The output holds
sharded safetensors, config, generation config and the tokenizer (the adapter run's own
when it saved one, else the base's). Same inputs and dtype give the same bytes, so a
weight difference made against a merged model applies to the merge `llamantino build`
redoes; should a machine's arithmetic ever differ, the difference's checksums say so,
naming the tensors.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from llamantino.config import setting
from llamantino.errors import LlamantinoError
from llamantino.fileio import safe_join

log = logging.getLogger(__name__)

KIND = "merge"
DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclasses.dataclass
class Config:
    base: str = setting("", "base model (folder or hub name) the adapter was trained on", path_input=True)
    adapter: str = setting("", "LoRA adapter folder (adapter_config.json, adapter_model.safetensors)", path_input=True)
    output: str = setting("", "folder to save the merged model in")
    dtype: str = setting("float32", "dtype the base is loaded, merged and saved in", choices=DTYPES)
    max_shard_size: str = setting("5GB", "largest safetensors file of the merged model")

    def validate(self, source):
        for name in ("base", "adapter", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")


def check_not_quantized(base) -> None:
    from llamantino.weightdiff import read_json

    path = safe_join(base, "config.json", f"base model {base}") if Path(base).is_dir() else None
    if path is not None and path.is_file():
        config = read_json(path, "config")
        if isinstance(config, dict) and isinstance(config.get("quantization_config"), dict):
            method = config["quantization_config"].get("quant_method", "quantized")
            raise LlamantinoError(f"{base}: a {method} (quantized) model; merging into it is lossy: "
                                  "merge into the 16- or 32-bit base instead")


def _adapter_config(adapter) -> dict:
    from llamantino.weightdiff import WeightFile, read_json, refuse_links_outside

    if not Path(adapter).is_dir():
        raise LlamantinoError(f"{adapter}: no such adapter folder")
    refuse_links_outside(adapter, "adapter")
    path = safe_join(adapter, "adapter_config.json", f"adapter {adapter}")
    if not path.is_file():
        raise LlamantinoError(f"{adapter}: no adapter_config.json: not a LoRA adapter folder")
    config = read_json(path, "adapter config")
    if not isinstance(config, dict):
        raise LlamantinoError(f"{path}: not a JSON object")
    if config.get("peft_type") != "LORA":
        raise LlamantinoError(f"{path}: peft_type {config.get('peft_type')!r}; only LoRA adapters merge")
    weights = safe_join(adapter, "adapter_model.safetensors", f"adapter {adapter}")
    if weights.is_file():
        WeightFile(weights)  # a truncated or damaged file: one line naming it, before peft reads it
    return config


def _adapter_embedding_rows(adapter) -> int | None:
    """Rows of the full embedding weights an adapter carries (when its vocabulary grew)."""
    from safetensors import safe_open

    path = safe_join(adapter, "adapter_model.safetensors", f"adapter {adapter}")
    if not path.is_file():
        raise LlamantinoError(f"{adapter}: no adapter_model.safetensors")
    with safe_open(path, "pt") as handle:
        for key in handle.keys():
            if "embed_tokens" in key and "lora_" not in key:
                return handle.get_slice(key).get_shape()[0]
    return None


def merge_into(folder, base, adapter, *, dtype: str = "float32", max_shard_size: str = "5GB") -> dict:
    """Merge `adapter` into `base` and save the result into the existing folder `folder`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamantino.weightdiff import refuse_links_outside

    if dtype not in DTYPES:
        raise LlamantinoError(f"merge dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    t0 = time.time()
    refuse_links_outside(base, "base model")
    check_not_quantized(base)
    adapter_config = _adapter_config(adapter)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    if getattr(model.config, "quantization_config", None):
        raise LlamantinoError(f"{base}: a quantized model; merging into it is lossy: merge into the "
                              "16- or 32-bit base instead")
    has_tokenizer = any((Path(adapter) / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        # the adapter run added tokens (e.g. <pad>): it must carry the grown embeddings
        carried = _adapter_embedding_rows(adapter)
        if carried != len(tokenizer):
            raise LlamantinoError(f"{adapter}: its tokenizer has {len(tokenizer)} tokens but the base has "
                                  f"{rows} embedding rows, and the adapter carries no embeddings of that size")
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = PeftModel.from_pretrained(model, adapter)
    merged = model.merge_and_unload()
    merged.save_pretrained(folder, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in merged.parameters()), "dtype": dtype,
            "lora_rank": adapter_config.get("r"), "target_modules": adapter_config.get("target_modules"),
            "adapter_trained_on": adapter_config.get("base_model_name_or_path"),
            "vocab_size": merged.get_input_embeddings().weight.shape[0], "seconds": round(time.time() - t0, 1)}


def merge_adapter(base, adapter, output, *, dtype: str = "float32", max_shard_size: str = "5GB") -> dict:
    """Library entry point: merge into `output`, which appears only when complete. The
    output may not be, hold or lie inside an input, nor be a folder that holds files."""
    from llamantino.fileio import atomic_dir
    from llamantino.weightdiff import check_output

    output = check_output(output, [("base", base), ("adapter", adapter)], overwrite=False)
    with atomic_dir(output) as tmp:
        return merge_into(tmp, base, adapter, dtype=dtype, max_shard_size=max_shard_size)


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.fileio import atomic_dir
    from llamantino.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    with atomic_dir(cfg.output) as tmp:
        metrics = merge_into(tmp, cfg.base, cfg.adapter, dtype=cfg.dtype, max_shard_size=cfg.max_shard_size)
        write_manifest(tmp, KIND, cfg, inputs=describe_inputs([cfg.base, cfg.adapter]), metrics=metrics)
    return {"status": "done", **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    return {"headline": {"params_M": round(metrics["parameters"] / 1e6, 2), "dtype": metrics["dtype"]},
            "metrics": metrics}


def add_arguments(parser):
    from llamantino.runner import add_stage_arguments

    add_stage_arguments(parser, KIND)


def main(args) -> int:
    from llamantino.runner import run_stage_command

    return run_stage_command(KIND, args)
