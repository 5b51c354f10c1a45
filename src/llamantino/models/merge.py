"""`llamantino merge`: fold a LoRA adapter into its base model and save a plain model.

The base is loaded in 16 or 32 bit; a quantized (4-bit) base is refused, because merging
into it is lossy (logits off by ~3e-3, against ~3e-7 in float32). The output holds
sharded safetensors, config, generation config and the tokenizer (the adapter run's own
when it saved one, else the base's).

The merge gives the same bits on every machine, so a weight difference made against a
merged model applies to the merge `llamantino build` redoes anywhere. PEFT's
`merge_and_unload` computes `B @ A` with the machine's matrix kernels, whose summation
order depends on the CPU's instruction set, the thread count and the GPU: the same merge
gave other bits in 25 to 28 of 39 tensors with an older CPU's kernels. Here each LoRA
product is a sum of rank-one outer products in a fixed order, in float64, with elementwise
operations only (every float32 x float32 product is exact in float64, and an elementwise
add or multiply is rounded the same way by every IEEE machine); the base weight is added
in float64 and the result rounded once to the saved dtype. That method is versioned
(`MERGE_METHOD`): the merged model's manifest records it, a weight difference made against
a merge records it too, and `diff apply` and `build` refuse a difference made against
another method's merge. LoRA on a mixture of experts' fused weights (PEFT `target_parameters`)
is folded the same way, one expert at a time. Modules PEFT saves whole (`modules_to_save`, a
trained router) or by rows (`trainable_token_indices`) are copied as they are; DoRA adapters are
refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import read_json_object, safe_join
from llamantino.models.weight_files import DTYPES

log = logging.getLogger(__name__)

KIND = "merge"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
# The arithmetic of a merge, recorded with every merged model and with every weight difference
# made against one: a new method (other bits) gets a new name.
MERGE_METHOD = "fp64-rank1-v1"
# What a manifest of a merge made before methods were recorded stands for (PEFT's
# merge_and_unload: bits that depend on the machine's matrix kernels).
LEGACY_MERGE_METHOD = "peft-merge_and_unload"
BLOCK_ELEMENTS = 1 << 18  # elements of a weight merged at a time (2 MiB in float64): cache-sized blocks


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
    path = safe_join(base, "config.json", f"base model {base}") if Path(base).is_dir() else None
    if path is not None and path.is_file():
        config = read_json_object(path, "config")
        if isinstance(config.get("quantization_config"), dict):
            method = config["quantization_config"].get("quant_method", "quantized")
            raise LlamantinoError(f"{base}: a {method} (quantized) model; merging into it is lossy: "
                                  "merge into the 16- or 32-bit base instead")


def _adapter_config(adapter) -> dict:
    from llamantino.models.weight_files import require_safetensors
    from llamantino.models.weight_files import WeightFile, refuse_links_outside

    if not Path(adapter).is_dir():
        raise LlamantinoError(f"{adapter}: no such adapter folder")
    refuse_links_outside(adapter, "adapter")
    path = safe_join(adapter, "adapter_config.json", f"adapter {adapter}")
    if not path.is_file():
        raise LlamantinoError(f"{adapter}: no adapter_config.json: not a LoRA adapter folder")
    config = read_json_object(path, "adapter config")
    if config.get("peft_type") != "LORA":
        raise LlamantinoError(f"{path}: peft_type {config.get('peft_type')!r}; only LoRA adapters merge")
    if config.get("use_dora"):
        raise LlamantinoError(f"{path}: a DoRA adapter (use_dora); llamantino merges plain LoRA only, with the "
                              "same bits on every machine (DoRA's weight norms are reductions whose order "
                              "depends on the machine)")
    if config.get("lora_bias"):
        raise LlamantinoError(f"{path}: lora_bias is set; llamantino merges plain LoRA only")
    require_safetensors(adapter, "adapter")
    WeightFile(safe_join(adapter, "adapter_model.safetensors", f"adapter {adapter}"))  # a truncated or damaged file: one line naming it, before peft reads it
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


# ---------------------------------------------------------------------------------------
# The arithmetic: the same bits on every machine


def round_once(values, dtype):
    """float64 values rounded to `dtype` (to nearest, ties to even) in one rounding.

    float32 is one conversion. For 16-bit dtypes the values go through float32 rounded to
    odd (truncated, with the last bit set when anything was cut off), which makes the second
    rounding give what a single rounding of the float64 value gives."""
    import torch

    if dtype in (torch.float64, torch.float32):
        return values.to(dtype)
    nearest = values.to(torch.float32)
    back = nearest.to(torch.float64)
    inexact = back != values
    away = inexact & (back.abs() > values.abs())  # rounded away from zero: step back towards it
    truncated = torch.where(away, torch.nextafter(nearest, torch.zeros_like(nearest)), nearest)
    bits = truncated.view(torch.int32)
    odd = torch.where(inexact, bits | 1, bits).view(torch.float32)
    return odd.to(dtype)


def merged_weight(weight, left, right, scaling: float):
    """`weight + scaling * (left @ right)` rounded once to weight's dtype, the same bits on any
    machine: `left` (rows x r) and `right` (r x columns) in float64, the product summed as r
    rank-one outer products in order k = 0, 1, ..., r - 1 with elementwise multiplies and adds
    (no matrix kernel, no fused multiply-add), then scaled, then added to the base weight in
    float64. Works on blocks of rows, so memory stays at a few blocks."""
    import torch

    rows, columns = weight.shape
    rank = left.shape[1]
    if left.shape[0] != rows or right.shape != (rank, columns):
        raise ValueError(f"LoRA factors {tuple(left.shape)} x {tuple(right.shape)} do not make a "
                         f"{rows} x {columns} weight")
    left = left.to(device=weight.device, dtype=torch.float64)
    right = right.to(device=weight.device, dtype=torch.float64)
    out = torch.empty_like(weight)
    step = max(1, BLOCK_ELEMENTS // max(1, columns))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        total = torch.zeros((stop - start, columns), dtype=torch.float64, device=weight.device)
        product = torch.empty_like(total)
        for k in range(rank):
            torch.mul(left[start:stop, k:k + 1], right[k:k + 1, :], out=product)
            total.add_(product)
        total.mul_(scaling)
        total.add_(weight[start:stop].to(torch.float64))
        out[start:stop] = round_once(total, weight.dtype)
    return out


def fold_lora(peft_model, adapter):
    """(plain model, LoRA weights merged): every LoRA layer of `peft_model` (loaded from
    `adapter`) folded into its base weight by `merged_weight`, with the factors read as the
    adapter file stores them (not as PEFT may have cast them); rows of `trainable_token_indices`
    and whole `modules_to_save` copied as they are."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Embedding as LoraEmbedding
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import ParamWrapper
    from peft.utils.other import ModulesToSaveWrapper, TrainableTokensWrapper
    from safetensors import safe_open

    from llamantino.models.moe4bit import refuse_4bit_experts

    refuse_4bit_experts(peft_model, adapter, "merge the adapter into 4-bit experts")
    path = safe_join(adapter, "adapter_model.safetensors", f"adapter {adapter}")
    merged_storage: dict[int, str] = {}
    count = 0
    with safe_open(path, "pt") as handle, torch.no_grad():
        keys = set(handle.keys())

        def factor(key):
            if key not in keys:
                raise LlamantinoError(f"{path}: no tensor {key}; not the adapter PEFT loaded")
            return handle.get_tensor(key)

        for name, module in peft_model.named_modules():
            if isinstance(module, TrainableTokensWrapper):
                module.token_adapter.merge()  # new rows copied into the embedding (index_copy)
            if isinstance(module, ModulesToSaveWrapper):
                copy_trained_module(module, name, adapter)
            if not isinstance(module, LoraLayer):
                continue
            adapters = [a for a in module.active_adapters if a in module.r]
            if len(adapters) != 1:
                raise LlamantinoError(f"{adapter}: layer {name} carries {len(adapters)} active adapters; "
                                      "one is merged at a time")
            active = adapters[0]
            if module.use_dora.get(active):
                raise LlamantinoError(f"{adapter}: layer {name} uses DoRA; llamantino merges plain LoRA only")
            if isinstance(module, LoraEmbedding):
                a, b = factor(f"{name}.lora_embedding_A"), factor(f"{name}.lora_embedding_B")
                left, right = a.T, b.T  # delta = (B @ A).T, one row per token
            elif isinstance(module, LoraLinear):
                a, b = factor(f"{name}.lora_A.weight"), factor(f"{name}.lora_B.weight")
                left, right = (a.T, b.T) if module.fan_in_fan_out else (b, a)
            elif isinstance(module, ParamWrapper):
                fold_expert_lora(module, name, factor, float(module.scaling[active]), merged_storage, path)
                count += 1
                continue
            else:
                raise LlamantinoError(f"{adapter}: layer {name} is a LoRA {type(module).__name__}; llamantino "
                                      "merges LoRA on linear and embedding layers only")
            weight = module.get_base_layer().weight
            storage = weight.untyped_storage().data_ptr()
            if storage in merged_storage:  # tied weights: both LoRA deltas would land on one tensor
                raise LlamantinoError(f"{adapter}: layers {merged_storage[storage]} and {name} share one tied "
                                      "weight and both carry LoRA; merge an adapter with LoRA on one of them")
            merged_storage[storage] = name
            try:
                weight.data.copy_(merged_weight(weight.data, left, right, float(module.scaling[active])))
            except ValueError as exc:
                raise LlamantinoError(f"{path}: layer {name}: {exc}") from None
            count += 1
    # LoRA layers give back their base layers (now merged); modules_to_save give their trained
    # copies; nothing is computed here.
    return peft_model.unload(), count


def fold_expert_lora(module, name: str, factor, scaling: float, merged_storage: dict, path) -> None:
    """LoRA on a parameter (PEFT `target_parameters`, a mixture of experts' fused weights) of a
    PEFT layer folded in, expert by expert (`fold_experts`)."""
    weight = module.get_param()
    storage = weight.untyped_storage().data_ptr()
    if storage in merged_storage:
        raise LlamantinoError(f"{path}: layers {merged_storage[storage]} and {name} carry LoRA on one weight")
    merged_storage[storage] = name
    transposed = weight.ndim == 3 and getattr(module.get_base_layer(), "is_transposed", False)
    stacked = weight.data if weight.ndim == 3 else weight.data.unsqueeze(0)
    try:
        fold_experts(stacked, factor(f"{name}.lora_A.weight"), factor(f"{name}.lora_B.weight"), scaling,
                     transposed=transposed)
    except ValueError as exc:
        raise LlamantinoError(f"{path}: parameter {name}.{module.parameter_name}: {exc}") from None


def fold_experts(stacked, a, b, scaling: float, *, transposed: bool = False) -> None:
    """PEFT's LoRA factors of a fused experts weight folded into `stacked` (experts x out x in, or
    experts x in x out when `transposed`, as gpt-oss keeps them) in place, expert by expert, by
    `merged_weight`. PEFT gives each of the E experts its own rank-r pair: lora_A (r * E, in) holds
    expert e's A in rows e*r .. e*r + r - 1, lora_B (out, r * E) its B in columns e, E + e, 2E + e,
    ...; the expert's delta is scaling * B_e @ A_e, an (out, in) matrix, or its transpose. Rows of
    the output taken apart (a gate or up half of `gate_up_proj`) fold with the same rows of lora_B,
    and give the same bits as the whole: each element is summed on its own."""
    experts = stacked.shape[0]
    if a.shape[0] % experts or b.shape[-1] != a.shape[0]:
        raise ValueError(f"LoRA factors {tuple(a.shape)} and {tuple(b.shape)} do not fit {experts} experts")
    rank = a.shape[0] // experts
    a = a.reshape(experts, rank, a.shape[-1])                      # experts x r x in
    b = b.reshape(b.shape[0], rank, experts).permute(2, 0, 1)      # experts x out x r
    for e in range(experts):
        left, right = (a[e].T, b[e].T) if transposed else (b[e], a[e])
        stacked[e].copy_(merged_weight(stacked[e], left, right, scaling))


def copy_trained_module(wrapper, name: str, adapter) -> None:
    """A module the adapter trained whole (`modules_to_save`): its trained copy's tensors copied
    into the original module, which `unload()` then gives back. PEFT 0.22 gives back the original
    module from `unload()` (earlier releases gave the copy): copying makes both the same."""
    active = [a for a in wrapper.active_adapters if a in wrapper.modules_to_save]
    if len(active) != 1:
        raise LlamantinoError(f"{adapter}: module {name} carries {len(active)} trained copies; merge one adapter")
    trained = wrapper.modules_to_save[active[0]]
    if hasattr(trained, "base_layer"):
        raise LlamantinoError(f"{adapter}: module {name} is trained whole and carries LoRA too; "
                              "llamantino merges one or the other")
    wrapper.original_module.load_state_dict(trained.state_dict())


def merge_method_of(folder) -> str | None:
    """The merge method a merged model's manifest records; for a merge made before methods
    were recorded, LEGACY_MERGE_METHOD; None for a folder that is no llamantino merge."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):  # unreadable: no record (the tensors' checksums still decide)
        return None
    if not isinstance(manifest, dict):
        return None
    metrics = manifest.get("metrics")
    method = metrics.get("merge_method") if isinstance(metrics, dict) else None
    if isinstance(method, str) and method:
        return method
    return LEGACY_MERGE_METHOD if manifest.get("stage") == KIND else None


def merge_into(folder, base, adapter, *, dtype: str = "float32", max_shard_size: str = "5GB") -> dict:
    """Merge `adapter` into `base` and save the result into the existing folder `folder`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamantino.models.weight_files import require_safetensors
    from llamantino.models.weight_files import refuse_links_outside

    if dtype not in DTYPES:
        raise LlamantinoError(f"merge dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    t0 = time.time()
    refuse_links_outside(base, "base model")
    check_not_quantized(base)
    if Path(base).is_dir():
        require_safetensors(base, "model")
    adapter_config = _adapter_config(adapter)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), use_safetensors=True)
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
    merged, count = fold_lora(PeftModel.from_pretrained(model, adapter), adapter)
    merged.save_pretrained(folder, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in merged.parameters()), "dtype": dtype,
            "merge_method": MERGE_METHOD, "lora_weights_merged": count,
            "lora_rank": adapter_config.get("r"), "target_modules": adapter_config.get("target_modules"),
            "target_parameters": adapter_config.get("target_parameters"),
            "adapter_trained_on": adapter_config.get("base_model_name_or_path"),
            "vocab_size": merged.get_input_embeddings().weight.shape[0], "seconds": round(time.time() - t0, 1)}


def merge_adapter(base, adapter, output, *, dtype: str = "float32", max_shard_size: str = "5GB") -> dict:
    """Library entry point: merge into `output`, which appears only when complete. The
    output may not be, hold or lie inside an input, nor be a folder that holds files."""
    from llamantino.core.fileio import atomic_dir
    from llamantino.models.weight_files import check_output, write_marker

    output = check_output(output, [("base", base), ("adapter", adapter)], overwrite=False)
    with atomic_dir(output) as tmp:
        metrics = merge_into(tmp, base, adapter, dtype=dtype, max_shard_size=max_shard_size)
        write_marker(tmp, KIND, metrics={"merge_method": metrics["merge_method"]})
    return metrics


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

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
