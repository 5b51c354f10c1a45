"""`llamantino export gguf`: a model (and optionally a LoRA adapter merged into it) as one GGUF
file, the format llama.cpp and Ollama run, written in pure Python with the `gguf` package.

What llama.cpp's own converter (`convert_hf_to_gguf.py`) writes, for the families llamantino
trains: llama (LLaMA 2 with SentencePiece, Llama 3 with byte-level BPE), mistral (llama.cpp's
`llama` architecture), qwen2, qwen3, gemma2, gemma3 (text) and phi3:

* metadata: context length, widths, heads and KV heads, head size, RMS-norm epsilon, RoPE base
  and scaling (linear, YaRN; Llama 3's scaling as the `rope_freqs` factors), sliding window and
  its per-layer pattern, attention and final-logit soft-capping;
* tensors under llama.cpp's names (`gguf.get_tensor_name_map`), with the rows of the Q and K
  projections of the llama layout permuted as llama.cpp's rotary embedding expects, Gemma's
  norm weights stored as 1 + w, phi3's fused qkv and gate-up projections as they are;
* the tokenizer: byte-level BPE (`gpt2`, with the `tokenizer.ggml.pre` llama.cpp knows for the
  tokenizer's split rule, see `pre_tokenizer_name`) or SentencePiece (`llama`, from
  tokenizer.model, or a SentencePiece-style BPE tokenizer.json), including tokens added by
  `llamantino vocab extend`; BOS, EOS, end-of-turn (the token the run's chat format ends an
  answer with, as `chat` stops at it), end-of-message, padding and unknown ids;
  whether BOS is added; the chat template.

The file is streamed: every tensor's name, shape and type is planned from the safetensors
headers first (so a bad input fails before anything is written), then each tensor is read,
merged with its LoRA factors (`models.merge.merged_weight`: float64, the same bits as
`llamantino merge`; LoRA on a mixture of experts' fused weights one expert at a time,
`models.merge.fold_experts`), converted and written before the next is read. Memory stays at a few
copies of the largest tensor. The output is written under a temporary name, renamed when
complete, and a `FILE.gguf.sha256` (the `sha256sum -c` format) is written next to it.

Quantisation (`q8_0`, `q4_0`) uses `gguf.quants.quantize` (bit-exact with ggml); a matrix whose
rows are not a multiple of the 32-value block stays F16 (the summary lists them), and 1-D
tensors (norms, biases, RoPE factors) stay F32, as llama.cpp keeps them.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import re
import time
from pathlib import Path

from llamantino import __version__
from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError, first_line
from llamantino.core.fileio import read_json_object, safe_join, sha256_file, temporary_name

log = logging.getLogger(__name__)

KIND = "export_gguf"
TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# model_type (config.json) -> llama.cpp architecture. llama.cpp converts Mistral as `llama`.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                 "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3",
                 "mixtral": "llama", "qwen3_moe": "qwen3moe"}
MOE = ("qwen2_moe",)  # mixtures of experts not written yet
# A key of our own in every file llamantino writes: `--overwrite` replaces only such a file,
# and a recipe skips an export whose settings are unchanged.
RECORD_KEY = "llamantino.export"
SHA_SUFFIX = ".sha256"


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder (safetensors), or a training run folder holding a LoRA adapter",
                         path_input=True)
    adapter: str = setting("", "LoRA adapter folder to merge into the model first", path_input=True)
    output: str = setting("", "GGUF file to write (FILE.gguf; FILE.gguf.sha256 is written next to it)")
    type: str = setting("f16", "tensor type of the matrices (norms stay f32)", choices=TYPES)

    def validate(self, source):
        for name in ("model", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")


# ---------------------------------------------------------------------------------------
# Inputs: the model, a run folder, an adapter


def resolve_source(model, adapter) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None). A run folder holding an adapter and no model
    stands for its base (the run manifest's `settings.model`, else the adapter's
    `base_model_name_or_path`) with that adapter."""
    model = Path(model)
    if not model.is_dir():
        raise LlamantinoError(f"{model}: no such model or run folder")
    if not (model / "config.json").is_file() and (model / "adapter_config.json").is_file():
        if adapter:
            raise LlamantinoError(f"{model}: a run holding an adapter; give either the run or --adapter, not both")
        base = ""
        manifest = model / "manifest.json"
        if manifest.is_file():
            settings = read_json_object(manifest, "run manifest").get("settings") or {}
            base = settings.get("model") or ""
            if settings.get("adapter"):  # trained on base + another adapter merged (sft after adapt)
                raise LlamantinoError(f"{model}: trained on {base} with the adapter {settings['adapter']} merged "
                                      f"into it; give that merged model (llamantino merge) and --adapter {model}")
        if not base:
            base = read_json_object(model / "adapter_config.json", "adapter config").get("base_model_name_or_path") or ""
        if not base or not Path(base).is_dir():
            raise LlamantinoError(f"{model}: the model this adapter was trained on ({base or 'unknown'}) is not a "
                                  "local folder; give the model folder and --adapter RUN")
        return Path(base), model
    return model, Path(adapter) if adapter else None


class Adapter:
    """A LoRA adapter read lazily: per base tensor name, its factors and scaling, or a whole
    replacement (modules_to_save). Checked against the base before anything is written."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        from llamantino.models.merge import _adapter_config
        from llamantino.models.weight_files import WeightFile

        self.folder = folder
        self.config = _adapter_config(folder)  # LoRA, no DoRA, safetensors, readable file
        if self.config.get("fan_in_fan_out"):
            raise LlamantinoError(f"{folder}: fan_in_fan_out adapters are not supported by export gguf; "
                                  "run `llamantino merge` and export the merged model")
        if self.config.get("trainable_token_indices"):
            raise LlamantinoError(f"{folder}: trainable_token_indices are not supported by export gguf; "
                                  "run `llamantino merge` and export the merged model")
        self.path = safe_join(folder, "adapter_model.safetensors", f"adapter {folder}")
        self.shapes = {name: info.shape for name, info in WeightFile(self.path).tensors.items()}
        self.handle = safe_open(self.path, "pt")
        self.lora: dict[str, tuple[str, str, bool, float]] = {}  # base tensor -> (A key, B key, embedding, scaling)
        self.whole: dict[str, str] = {}  # base tensor -> adapter key
        # LoRA on parameters (PEFT target_parameters: a mixture of experts' fused weights), by the
        # module holding them: [(A key, B key)]; which parameter each pair adapts is settled by
        # `check`, from the shapes (PEFT nests one wrapper per parameter, `base_layer` inside).
        self.on_parameters: dict[str, list[tuple[str, str]]] = {}
        # A pair whose module a parameter target also names (a linear `down_proj` and a target
        # `down_proj`): `check` decides by whether the model has that module's weight.
        self.either: dict[str, tuple[str, str, str]] = {}  # base tensor -> (module, A key, B key)
        self.experts: dict[str, tuple[str, str, float]] = {}  # fused parameter -> (A key, B key, scaling)
        targets = self.config.get("target_parameters") or []
        for key in self.shapes:
            name = key.removeprefix("base_model.model.")
            if ".lora_A." in key or key.endswith(".lora_embedding_A"):
                module = name.split(".lora_")[0]
                embedding = key.endswith(".lora_embedding_A")
                b_key = key.replace("lora_embedding_A", "lora_embedding_B") if embedding else key.replace(
                    ".lora_A.", ".lora_B.")
                if b_key not in self.shapes:
                    raise LlamantinoError(f"{self.path}: {key} has no matching {b_key}")
                holder = module.replace(".base_layer", "")
                if not embedding and any(f"{holder}.{t.rpartition('.')[2]}" == t or
                                         f"{holder}.{t.rpartition('.')[2]}".endswith(f".{t}") for t in targets):
                    if holder != module:  # a wrapper nested in another: a parameter's for sure
                        self.on_parameters.setdefault(holder, []).append((key, b_key))
                    else:
                        self.either[module + ".weight"] = (module, key, b_key)
                    continue
                rank = self.shapes[key][0]
                self.lora[module + ".weight"] = (key, b_key, embedding, self._scaling(module, rank))
            elif ".lora_B." in key or key.endswith(".lora_embedding_B"):
                continue
            elif "token_adapter" in key:
                raise LlamantinoError(f"{self.path}: {key}: trainable token rows are not supported by export gguf; "
                                      "run `llamantino merge` and export the merged model")
            elif ".original_module." in key:
                continue  # PEFT keeps the untrained module next to its trained copy
            elif ".modules_to_save." in key:  # the trained copy of a module trained whole
                self.whole[name.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")] = key
            else:  # the same copy under the module's own name (older PEFT files hold only this one)
                self.whole.setdefault(name, key)

    def _scaling(self, module: str, rank: int) -> float:
        alpha = self.config.get("lora_alpha", 8)
        for pattern, value in (self.config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?{pattern}$", module):  # PEFT's rule: the pattern ends the module's name
                alpha = value
                break
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

    def check(self, shapes: dict[str, list[int]], model: Path, fused: dict[str, list[int]]) -> None:
        """Every tensor the adapter changes exists in the model with the shape its factors make.
        `shapes`: the model's tensors under the names transformers gives them in memory (the
        adapter's names); `fused`: its experts' weights as transformers fuses them (experts x out
        x in), which LoRA on parameters adapts."""
        for base, (module, a_key, b_key) in self.either.items():
            if base in shapes:  # a linear layer's weight
                self.lora[base] = (a_key, b_key, False, self._scaling(module, self.shapes[a_key][0]))
            else:
                self.on_parameters.setdefault(module, []).append((a_key, b_key))
        self.either = {}
        for holder, pairs in self.on_parameters.items():
            for a_key, b_key in pairs:
                a, b = self.shapes[a_key], self.shapes[b_key]
                fits = [p for p, (experts, out, columns) in fused.items() if p.rpartition(".")[0] == holder
                        and a[0] % experts == 0 and a[1] == columns and b == [out, a[0]]]
                if not fits:
                    where = [p for p in fused if p.rpartition(".")[0] == holder]
                    raise LlamantinoError(f"{self.folder}: the adapter's LoRA {a_key} ({a} x {b}) fits no expert "
                                          f"weight of {holder} in {model} "
                                          f"({', '.join(f'{p} {fused[p]}' for p in where) or 'none there'}): an "
                                          "adapter for another base model, or experts export gguf does not read")
                if len(fits) > 1 or fits[0] in self.experts:
                    raise LlamantinoError(f"{self.folder}: the adapter's LoRA {a_key} fits {' and '.join(fits)} "
                                          "alike; run `llamantino merge` and export the merged model")
                self.experts[fits[0]] = (a_key, b_key, self._scaling(fits[0], a[0] // fused[fits[0]][0]))
        for base, (a_key, b_key, embedding, _) in self.lora.items():
            if base not in shapes:
                raise LlamantinoError(f"{self.folder}: the adapter changes {base}, which {model} does not have: "
                                      "an adapter for another base model")
            a, b = self.shapes[a_key], self.shapes[b_key]
            made = [a[1], b[0]] if embedding else [b[0], a[1]]
            if made != shapes[base]:
                raise LlamantinoError(f"{self.folder}: {base} is {shapes[base]} in {model} but the adapter's factors "
                                      f"make {made}: an adapter for another base model")
        for base, key in self.whole.items():
            if base not in shapes and base != "lm_head.weight":
                raise LlamantinoError(f"{self.folder}: the adapter replaces {base}, which {model} does not have: "
                                      "an adapter for another base model")
            if base in shapes and len(self.shapes[key]) != len(shapes[base]):
                raise LlamantinoError(f"{self.folder}: {base} has shape {self.shapes[key]} in the adapter and "
                                      f"{shapes[base]} in {model}: an adapter for another base model")

    def apply_experts(self, fused: str, half: int | None, stacked):
        """`stacked` (experts x out x in, a float tensor of its own) with this adapter's LoRA on the
        fused expert weight `fused` folded in, as `llamantino merge` folds it
        (`models.merge.fold_experts`); `half` 0 or 1: `stacked` is the gate or the up half of a
        fused gate-up weight, which takes the same half of lora_B's rows."""
        from llamantino.models.merge import fold_experts

        if fused not in self.experts:
            return stacked
        a_key, b_key, scaling = self.experts[fused]
        a, b = self.handle.get_tensor(a_key), self.handle.get_tensor(b_key)
        if half is not None:
            width = b.shape[0] // 2
            b = b[half * width:(half + 1) * width]
        fold_experts(stacked, a, b, scaling)
        return stacked

    def apply(self, name: str, weight):
        """`weight` with this adapter's change to tensor `name` (as `llamantino merge` computes it)."""
        from llamantino.models.merge import merged_weight

        if name in self.whole:
            return self.handle.get_tensor(self.whole[name])
        if name not in self.lora:
            return weight
        a_key, b_key, embedding, scaling = self.lora[name]
        a, b = self.handle.get_tensor(a_key), self.handle.get_tensor(b_key)
        left, right = (a.T, b.T) if embedding else (b, a)
        return merged_weight(weight, left, right, scaling)


# ---------------------------------------------------------------------------------------
# The plan: every tensor's GGUF name, shape and type, before anything is written


@dataclasses.dataclass
class Planned:
    name: str            # GGUF name
    source: str | None   # safetensors tensor (None: computed, e.g. rope_freqs)
    shape: list[int]     # numpy shape as written (rows, columns)
    qtype: object        # gguf.GGMLQuantizationType
    nbytes: int
    experts: list[str] = dataclasses.field(default_factory=list)  # per-expert tensors stacked into this one
    half: int | None = None  # of a fused gate-up tensor of experts: 0 the gate, 1 the up projection
    fused: str | None = None  # experts: the fused weight (transformers' name in memory) this is all or half of


# One expert's weight in a mixture-of-experts checkpoint: llama.cpp stacks a layer's experts
# into one 3-D tensor per projection (ffn_gate_exps, ffn_up_exps, ffn_down_exps).
# transformers 5 keeps experts fused: `experts.gate_up_proj` (experts x 2 * width x hidden, the
# gate first) and `experts.down_proj`; llama.cpp wants the gate and up projections apart.
FUSED_EXPERTS = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
EXPERT = re.compile(r"^(model\.layers\.\d+\.(?:mlp|block_sparse_moe)\.experts)\.(\d+)\.(\w+)\.weight$")
# A per-expert checkpoint's projection -> (the fused weight transformers makes of it, which half):
# gate_up_proj is the gate (Mixtral's w1) and the up projection (w3) concatenated, gate first.
EXPERT_PARTS = {"gate_proj": ("gate_up_proj", 0), "w1": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
                "w3": ("gate_up_proj", 1), "down_proj": ("down_proj", None), "w2": ("down_proj", None)}


def memory_name(source: str) -> str:
    """A checkpoint tensor's name as transformers 5 names it in memory, and so as an adapter
    names it: Mixtral's `block_sparse_moe` is `mlp` (transformers' conversion mapping)."""
    return source.replace(".block_sparse_moe.", ".mlp.")


def _rope(config: dict) -> dict:
    """RoPE settings of a config: transformers 5 `rope_parameters`, or the older rope_theta /
    rope_scaling keys. For Gemma 3 the full-attention layers' ones."""
    params = config.get("rope_parameters") or {}
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        params = params["full_attention"]
    rope = dict(config.get("rope_scaling") or {})
    rope.update(params)
    if "rope_theta" not in rope and "rope_theta" in config:
        rope["rope_theta"] = config["rope_theta"]
    return rope


def llama3_rope_factors(config: dict, head_dim: int):
    """Llama 3's frequency scaling as the per-frequency divisors llama.cpp reads from the
    `rope_freqs` tensor (as convert_hf_to_gguf.py computes them)."""
    import numpy as np

    rope = _rope(config)
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def qtype_of(type_name: str):
    from gguf import GGMLQuantizationType as Q

    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[type_name]


def file_type_of(type_name: str):
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
            "q4_0": F.MOSTLY_Q4_0}[type_name]


def _nbytes(shape, qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


class Exporter:
    def __init__(self, model: Path, adapter: Path | None, type_name: str):
        from llamantino.models.weight_files import ModelFolder, refuse_links_outside

        if type_name not in TYPES:
            raise LlamantinoError(f"export gguf: type {type_name!r} is not supported; valid: {', '.join(TYPES)}")
        refuse_links_outside(model, "model")
        self.folder = ModelFolder(model)
        self.model = model
        self.config = self.folder.config
        model_type = self.config.get("model_type")
        if model_type == "gemma3":
            raise LlamantinoError(f"{model / 'config.json'}: a Gemma 3 vision-language checkpoint "
                                  "(Gemma3ForConditionalGeneration); export gguf writes Gemma 3 text models "
                                  "(gemma3_text) only")
        if model_type in MOE:
            raise LlamantinoError(f"{model / 'config.json'}: model_type {model_type!r} is a mixture of experts; "
                                  "export gguf does not support MoE models yet")
        if model_type not in ARCHITECTURES:
            raise LlamantinoError(f"{model / 'config.json'}: model_type {model_type!r} "
                                  f"({', '.join(self.config.get('architectures') or []) or 'no architectures'}) "
                                  f"is not supported by export gguf; supported: {', '.join(sorted(ARCHITECTURES))}")
        if self.config.get("quantization_config"):
            raise LlamantinoError(f"{model}: a quantized model; export the 16- or 32-bit model")
        self.model_type = model_type
        self.arch = ARCHITECTURES[model_type]
        self.type_name = type_name
        self.adapter = None
        if adapter is not None:
            refuse_links_outside(adapter, "adapter")
            self.adapter = Adapter(adapter)
            self.adapter.check({memory_name(n): t.shape for n, t in self.folder.tensors.items()}, model,
                               self.fused_shapes())
        c = self.config
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads") or self.heads
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.heads
        self.layers = c["num_hidden_layers"]
        self.kept_f16: list[str] = []
        self.extra: dict = {}  # computed tensors by GGUF name
        self.plan = self._plan()
        self.vocab_rows = next(p.shape[0] for p in self.plan if p.name == "token_embd.weight")

    # -- tensors ------------------------------------------------------------------------

    def fused_shapes(self) -> dict[str, list[int]]:
        """The experts' weights as transformers 5 fuses them in memory: {name: [experts, out, in]},
        from fused tensors or from per-expert ones."""
        shapes, parts = {}, {}
        for source, info in self.folder.tensors.items():
            fused, match = FUSED_EXPERTS.match(source), EXPERT.match(source)
            if fused and len(info.shape) == 3:
                shapes[source] = list(info.shape)
            elif match and match[3] in EXPERT_PARTS:
                name, half = EXPERT_PARTS[match[3]]
                parts.setdefault(f"{memory_name(match[1])}.{name}", {}).setdefault(half, set()).add(
                    (int(match[2]), tuple(info.shape)))
        for name, halves in parts.items():
            members = sorted(next(iter(halves.values())))
            out = sum(next(iter(h))[1][0] for h in halves.values())
            shapes[name] = [len(members), out, members[0][1][1]]
        return shapes

    def _sources(self) -> list[str]:
        names = [n for n in self.folder.tensors if not n.endswith(".rotary_emb.inv_freq")]
        tied = "lm_head.weight" not in self.folder.tensors
        if self.adapter is not None and tied and "lm_head.weight" in self.adapter.whole.keys() | self.adapter.lora.keys():
            names.append("lm_head.weight")  # the adapter trained the output layer of a tied model: untie it
        return names

    def _plan(self) -> list[Planned]:
        import gguf

        arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == self.arch)
        names = gguf.get_tensor_name_map(arch, self.layers)
        plan = []
        if self.model_type == "llama" and _rope(self.config).get("rope_type") == "llama3":
            factors = llama3_rope_factors(self.config, self.head_dim)
            self.extra["rope_freqs.weight"] = factors
            plan.append(self._planned("rope_freqs.weight", None, list(factors.shape)))
        experts: dict[str, list[tuple[int, str]]] = {}
        for source in self._sources():
            match = EXPERT.match(source)
            if match:
                experts.setdefault(f"{match[1]}.{match[3]}", []).append((int(match[2]), source))
        grouped = {source for members in experts.values() for _, source in members}
        for stacked, members in experts.items():
            members.sort()
            if [e for e, _ in members] != list(range(len(members))):
                raise LlamantinoError(f"{self.model}: experts of {stacked} are not numbered 0..{len(members) - 1}")
            shapes = {tuple(self.folder.tensors[s].shape) for _, s in members}
            if len(shapes) != 1:
                raise LlamantinoError(f"{self.model}: experts of {stacked} differ in shape")
            target = names.get_name(stacked)
            if target is None:
                raise LlamantinoError(f"{self.model}: {stacked} has no llama.cpp name for architecture {self.arch}")
            planned = self._planned(target + ".weight", None, [len(members), *shapes.pop()])
            planned.experts = [s for _, s in members]
            holder, _, part = stacked.rpartition(".")
            if part in EXPERT_PARTS:
                planned.fused = f"{memory_name(holder)}.{EXPERT_PARTS[part][0]}"
                planned.half = EXPERT_PARTS[part][1]
            plan.append(planned)
        for source in self._sources():
            if source in grouped:
                continue
            fused = FUSED_EXPERTS.match(source)
            if fused:
                shape = list(self.folder.tensors[source].shape)
                if fused[2] == "down_proj":
                    planned = self._planned(names.get_name(f"{fused[1]}.down_proj") + ".weight", source, shape)
                    planned.fused = source
                    plan.append(planned)
                    continue
                if len(shape) != 3 or shape[1] % 2:
                    raise LlamantinoError(f"{self.model}: {source} has shape {shape}, not experts x 2 * width x hidden")
                for half, part in enumerate(("gate_proj", "up_proj")):
                    planned = self._planned(names.get_name(f"{fused[1]}.{part}") + ".weight", source,
                                            [shape[0], shape[1] // 2, shape[2]])
                    planned.half, planned.fused = half, source
                    plan.append(planned)
                continue
            shape = self.folder.tensors[source].shape if source in self.folder.tensors else \
                self.folder.tensors["model.embed_tokens.weight"].shape
            if self.adapter is not None and memory_name(source) in self.adapter.whole:  # e.g. grown vocabulary
                shape = self.adapter.shapes[self.adapter.whole[memory_name(source)]]
            target = names.get_name(source, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise LlamantinoError(f"{self.model}: tensor {source} has no llama.cpp name for architecture "
                                      f"{self.arch}; not a model export gguf knows")
            plan.append(self._planned(target, source, list(shape)))
        return plan

    def _planned(self, name: str, source: str | None, shape: list[int]) -> Planned:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

        qtype = qtype_of(self.type_name)
        if len(shape) < 2 or name == "rope_freqs.weight" or name.endswith("ffn_gate_inp.weight"):
            qtype = Q.F32  # norms, biases, RoPE factors, expert routers: F32 as llama.cpp keeps them
        elif shape[-1] % GGML_QUANT_SIZES[qtype][0]:
            qtype = Q.F16  # rows that do not fill whole quantisation blocks
            self.kept_f16.append(name)
        return Planned(name, source, shape, qtype, _nbytes(shape, qtype))

    def tensor(self, planned: Planned):
        """The tensor's data as written: a numpy array of F32, F16 or quantised bytes."""
        import torch

        if planned.experts:  # a layer's experts stacked: the one tensor this holds in memory
            weight = torch.stack([self._read(source) for source in planned.experts])
        elif planned.half is not None:
            fused = self._read(planned.source)
            width = fused.shape[1] // 2
            weight = fused[:, planned.half * width:(planned.half + 1) * width].contiguous()
            del fused
        elif planned.source is None:
            weight = torch.from_numpy(self.extra[planned.name])
        else:
            weight = self._read(planned.source)
            if self.adapter is not None:
                weight = self.adapter.apply(memory_name(planned.source), weight)
            weight = self._transform(planned.source, weight)
        if self.adapter is not None and planned.fused is not None:  # LoRA on the experts, one at a time
            weight = self.adapter.apply_experts(planned.fused, planned.half, weight)
        if list(weight.shape) != planned.shape:
            raise LlamantinoError(f"{self.model}: tensor {planned.source}: shape {list(weight.shape)} where the "
                                  f"header announced {planned.shape}")
        return convert(weight, planned.qtype)

    def _read(self, source: str):
        """One tensor, read with plain file reads at the offset the checked header gives (no
        memory map: its pages would count in the process's memory until the file closes)."""
        import torch

        if source == "lm_head.weight" and source not in self.folder.tensors:
            source = "model.embed_tokens.weight"  # a tied model whose output layer the adapter changed
        info = self.folder.tensors[source]
        if info.dtype not in TORCH_DTYPES:
            raise LlamantinoError(f"{info.path}: tensor {source} is {info.dtype}; export gguf reads F32, F16, BF16")
        data = torch.empty(info.nbytes, dtype=torch.uint8)
        with open(info.path, "rb") as handle:
            handle.seek(info.start)
            if handle.readinto(memoryview(data.numpy())) != info.nbytes:
                raise LlamantinoError(f"{info.path}: tensor {source} is cut short")
        return data.view(getattr(torch, TORCH_DTYPES[info.dtype])).reshape(info.shape)

    def _transform(self, source: str, weight):
        if self.arch == "llama":  # llama.cpp's rotary embedding takes the rows of each head interleaved
            if source.endswith("self_attn.q_proj.weight"):
                return permute(weight, self.heads, self.heads)
            if source.endswith("self_attn.k_proj.weight"):
                return permute(weight, self.heads, self.kv_heads)
        if self.arch in ("gemma2", "gemma3") and source.endswith("norm.weight"):
            return weight.to(__import__("torch").float32) + 1  # Gemma's RMSNorm scales by 1 + w; llama.cpp's by w
        return weight

    # -- metadata -----------------------------------------------------------------------

    def metadata(self, writer, name: str) -> None:
        c = self.config
        writer.add_name(name)
        writer.add_type("model")
        writer.add_file_type(file_type_of(self.type_name))
        if self.type_name in ("q8_0", "q4_0"):
            import gguf

            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(c.get("max_position_embeddings") or 2048)
        writer.add_embedding_length(c["hidden_size"])
        writer.add_block_count(self.layers)
        writer.add_feed_forward_length(c["intermediate_size"])
        writer.add_head_count(self.heads)
        writer.add_head_count_kv(self.kv_heads)
        writer.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-6))
        rope = _rope(c)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        writer.add_vocab_size(self.vocab_rows)
        if self.arch in ("llama", "phi3"):
            rotary = int(self.head_dim * c.get("partial_rotary_factor", 1.0))
            writer.add_rope_dimension_count(rotary)
        experts = c.get("num_local_experts") or c.get("num_experts")
        if experts:
            writer.add_expert_count(int(experts))
            writer.add_expert_used_count(int(c["num_experts_per_tok"]))
            if c.get("moe_intermediate_size"):
                writer.add_expert_feed_forward_length(int(c["moe_intermediate_size"]))
            if self.model_type == "qwen3_moe" and not c.get("norm_topk_prob", False):
                raise LlamantinoError(f"{self.model / 'config.json'}: norm_topk_prob is false; llama.cpp's qwen3moe "
                                      "always renormalises the chosen experts' weights, so the file would compute "
                                      "another model")
            if self.model_type == "qwen3_moe" and (c.get("mlp_only_layers") or c.get("decoder_sparse_step", 1) != 1):
                raise LlamantinoError(f"{self.model / 'config.json'}: dense layers among the experts "
                                      "(mlp_only_layers, decoder_sparse_step) are not supported by export gguf")
        if self.arch in ("qwen3", "qwen3moe", "gemma2", "gemma3") or self.head_dim != c["hidden_size"] // self.heads:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type == "linear":
            writer.add_rope_scaling_type(__import__("gguf").RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        elif rope_type == "yarn":
            writer.add_rope_scaling_type(__import__("gguf").RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(rope["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings")
                                                     or c.get("max_position_embeddings")))
        elif rope_type not in ("default", "llama3"):
            raise LlamantinoError(f"{self.model / 'config.json'}: RoPE scaling {rope_type!r} is not supported by "
                                  "export gguf (supported: none, linear, yarn, llama3)")
        elif rope_type == "llama3" and self.model_type != "llama":
            raise LlamantinoError(f"{self.model / 'config.json'}: llama3 RoPE scaling on a {self.model_type} model")
        window = c.get("sliding_window")
        if self.arch in ("gemma2", "gemma3", "phi3") and window:
            writer.add_sliding_window(int(window))
        if self.arch == "gemma3":
            types = c.get("layer_types") or []
            if types:
                writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
            local = (c.get("rope_parameters") or {}).get("sliding_attention") or {}
            writer.add_rope_freq_base_swa(float(local.get("rope_theta", c.get("rope_local_base_freq", 10000.0))))
        if self.arch in ("gemma2", "gemma3"):
            if c.get("attn_logit_softcapping"):
                writer.add_attn_logit_softcapping(float(c["attn_logit_softcapping"]))
            if c.get("final_logit_softcapping"):
                writer.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        if self.arch == "phi3":
            original = c.get("original_max_position_embeddings")
            if original:
                writer.add_rope_scaling_orig_ctx_len(int(original))
            if c.get("rope_scaling"):
                raise LlamantinoError(f"{self.model / 'config.json'}: phi3 with rope_scaling (LongRoPE) is not "
                                      "supported by export gguf yet")
        if self.model_type == "mistral" and window and window < (c.get("max_position_embeddings") or 0):
            log.warning("%s: a sliding window of %d tokens; llama.cpp runs Mistral as `llama` and attends over "
                        "the whole context", self.model, window)


CHUNK_ELEMENTS = 1 << 20  # values converted at a time (4 MiB in float32)
TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def convert(weight, qtype):
    """`weight` (a torch tensor of any float dtype) as the bytes of `qtype`, converted a few rows
    at a time: memory holds the tensor, its converted form and one float32 chunk, never a float32
    copy of the whole tensor. A float16 tensor written as F16 is its own memory."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if qtype == Q.F16 and weight.dtype == torch.float16:
        return weight.contiguous().numpy()
    if qtype == Q.F32 and weight.dtype == torch.float32:
        return weight.contiguous().numpy()
    shape = list(weight.shape)
    rows = weight.reshape(-1, shape[-1])
    if qtype in (Q.F32, Q.F16):
        out = np.empty(rows.shape, dtype=np.float32 if qtype == Q.F32 else np.float16)
    else:
        out = np.empty(quants.quant_shape_to_byte_shape(rows.shape, qtype), dtype=np.uint8)
    step = max(1, CHUNK_ELEMENTS // max(1, shape[-1]))
    for start in range(0, rows.shape[0], step):
        chunk = rows[start:start + step].to(torch.float32).numpy()
        if qtype in (Q.F32, Q.F16):
            out[start:start + step] = chunk  # numpy rounds float32 to float16 to nearest even, as llama.cpp's converter
        else:
            out[start:start + step] = quants.quantize(chunk, qtype)
    if qtype in (Q.F32, Q.F16):
        return out.reshape(shape)
    return out.reshape(quants.quant_shape_to_byte_shape(shape, qtype))


def permute(weight, heads: int, kv_heads: int):
    """Rows of each head reordered from halves (transformers' rotate_half) to interleaved pairs
    (llama.cpp's rotary embedding), as convert_hf_to_gguf.py's LlamaModel.permute."""
    if kv_heads != heads:
        heads = kv_heads
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


# ---------------------------------------------------------------------------------------
# The tokenizer

# llama.cpp's `tokenizer.ggml.pre` names and the split rule (pre-tokenizer regex) each stands
# for in llama.cpp (src/llama-vocab.cpp). A tokenizer.json whose split rule is one of these
# gets that name; byte-level BPE without a Split step (ByteLevel's own GPT-2 rule) is `gpt-2`.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
# Tokens that end a turn, by family (llama.cpp's end-of-generation ids): Llama 3, ChatML, Gemma, Phi-3.
# Only when neither the run's prompt format nor the tokenizer's chat template says which (`end_of_turn`).
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


def _split_rule(pre: dict | None) -> tuple[bool, str | None]:
    """(byte-level, split regex or None) of a tokenizer.json pre_tokenizer."""
    if not pre:
        return False, None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    byte_level, regex = False, None
    for step in steps or []:
        if step.get("type") == "ByteLevel":
            byte_level = True
            if step.get("use_regex", True):
                regex = regex or "gpt-2"
        elif step.get("type") == "Split":
            pattern = step.get("pattern") or {}
            regex = pattern.get("Regex") or pattern.get("String")
    return byte_level, regex


def pre_tokenizer_name(state: dict, where) -> str:
    """The `tokenizer.ggml.pre` llama.cpp knows for this tokenizer's split rule. llama.cpp's
    converter identifies a tokenizer by hashing its output on a test text against the hub
    tokenizers it knows; a tokenizer llamantino trained or extended has no such hash, so the
    rule itself is compared with the rules llama.cpp implements."""
    _, regex = _split_rule(state.get("pre_tokenizer"))
    if regex == "gpt-2":
        return "gpt-2"
    if regex in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[regex]
    raise LlamantinoError(f"{where}: pre_tokenizer: the split rule {regex!r} is none llama.cpp implements "
                          f"(known: GPT-2's, {', '.join(sorted(PRE_TOKENIZERS.values()))})")


def run_settings(model: Path, adapter: Path | None, *, strict: bool = True) -> dict:
    """The settings of the run that chose the prompt format: the adapter run's, else the model
    folder's (an instruct run); {} for a model no run of ours made. `strict`: a manifest.json
    llamantino did not write is refused, else it says nothing."""
    from llamantino.core.manifest import read_manifest

    for folder in (adapter, model):
        if folder is None:
            continue
        try:
            manifest = read_manifest(folder) or {}
        except LlamantinoError:
            if strict:
                raise
            manifest = {}
        settings = manifest.get("settings") or {}
        if settings.get("prompt_format"):
            return settings
    return {}


def end_of_turn(model: Path, adapter: Path | None, tokenizer) -> tuple[str | None, str]:
    """(the token that ends an answer, what says so), as `chat` stops: the run's prompt format
    (its manifest's prompt_format), else the tokenizer's own chat template (`auto`); (None, ...)
    when neither says (no run of ours, no chat template, or one whose answers end with no special
    token), and END_OF_TURN's first token in the vocabulary stands in."""
    from llamantino.data.prompts import prompt_format

    name = str(run_settings(model, adapter, strict=False).get("prompt_format") or "auto")
    if name != "auto":
        try:
            return prompt_format(name, tokenizer, "none").end_of_turn, f"the run's prompt format {name}"
        except LlamantinoError as exc:
            raise LlamantinoError(f"export gguf: the run's prompt format {name}: {exc}") from None
    if not tokenizer.chat_template:
        return None, "no prompt format and no chat template"
    try:
        return prompt_format("auto", tokenizer, "none").end_of_turn, "the chat template"
    except LlamantinoError as exc:
        return None, f"the chat template ({first_line(exc)})"


def _added(state: dict) -> dict[int, dict]:
    return {int(t["id"]): t for t in state.get("added_tokens") or []}


def write_tokenizer(writer, model: Path, tokenizer_source: Path, vocab_size: int, config: dict, *,
                    adapter: Path | None = None, end_of_turn_token: str | None = None) -> dict:
    """Tokenizer metadata from `tokenizer_source` (the adapter run's tokenizer when it saved one,
    else the model's). The end-of-turn id is `end_of_turn_token`'s when given, else the run's chat
    format's (`end_of_turn`). Returns {"tokenizer": "gpt2"|"llama", "pre": ..., "eot": ...}."""
    import gguf
    from transformers import AutoTokenizer

    from llamantino.models.modeling import adds_bos

    path = safe_join(tokenizer_source, "tokenizer.json", f"tokenizer {tokenizer_source}")
    if not path.is_file():
        raise LlamantinoError(f"{tokenizer_source}: no tokenizer.json")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LlamantinoError(f"{path}: unreadable tokenizer ({first_line(exc)})") from None
    bpe = state.get("model") or {}
    if bpe.get("type") != "BPE":
        raise LlamantinoError(f"{path}: model type {bpe.get('type')!r}; export gguf writes BPE tokenizers "
                              "(byte-level or SentencePiece-style)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    byte_level, _ = _split_rule(state.get("pre_tokenizer"))
    added = _added(state)
    vocab = dict(bpe.get("vocab") or {})
    spm_file = safe_join(tokenizer_source, "tokenizer.model", f"tokenizer {tokenizer_source}")
    count = max([vocab_size, len(tokenizer)])
    if len(tokenizer) > vocab_size:
        raise LlamantinoError(f"{path}: {len(tokenizer)} tokens but the model has {vocab_size} embedding rows")
    tokens = [f"[PAD{i}]" for i in range(count)]
    types = [gguf.TokenType.UNUSED] * count
    scores = [-1000.0] * count
    T = gguf.TokenType
    if byte_level:
        kind, pre = "gpt2", pre_tokenizer_name(state, path)
        for token, i in vocab.items():
            tokens[i], types[i] = token, T.NORMAL
    else:
        kind, pre = "llama", None
        if spm_file.is_file():
            from sentencepiece import sentencepiece_model_pb2 as pb

            proto = pb.ModelProto()
            try:
                proto.ParseFromString(spm_file.read_bytes())
            except Exception as exc:  # noqa: BLE001 (protobuf's DecodeError)
                raise LlamantinoError(f"{spm_file}: not a SentencePiece model ({first_line(exc)})") from None
            for i, piece in enumerate(proto.pieces):
                tokens[i], scores[i], types[i] = piece.piece, piece.score, T(piece.type)
            writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
        else:  # SentencePiece-style BPE in tokenizer.json: scores rank pieces by id, as SentencePiece BPE does
            for token, i in vocab.items():
                byte = re.fullmatch(r"<0x[0-9A-F]{2}>", token)
                tokens[i], scores[i], types[i] = token, -float(i), T.BYTE if byte else T.NORMAL
            if bpe.get("unk_token") in vocab:
                types[vocab[bpe["unk_token"]]] = T.UNKNOWN
    for i, entry in added.items():
        if i >= count:
            raise LlamantinoError(f"{path}: added token {entry.get('content')!r} has id {i} beyond the model's "
                                  f"{count} embedding rows")
        tokens[i] = entry["content"]
        special = entry.get("special")
        types[i] = T.CONTROL if special else T.USER_DEFINED
        if tokens[i] == bpe.get("unk_token") or tokens[i] == tokenizer.unk_token:
            types[i] = T.UNKNOWN if kind == "llama" else T.CONTROL
    writer.add_tokenizer_model(kind)
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "llama":
        writer.add_token_scores(scores)
    merges = bpe.get("merges") or []
    if merges:
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    if ids["bos"] is not None:
        writer.add_bos_token_id(ids["bos"])
    if ids["eos"] is not None:
        writer.add_eos_token_id(ids["eos"])
    if ids["unk"] is not None:
        writer.add_unk_token_id(ids["unk"])
    if ids["pad"] is not None:
        writer.add_pad_token_id(ids["pad"])
    vocab_ids = tokenizer.get_vocab()
    token, said = (end_of_turn_token, "given") if end_of_turn_token else end_of_turn(model, adapter, tokenizer)
    if token is None:
        token = next((t for t in END_OF_TURN if t in vocab_ids), None)
        if token is not None:
            log.warning("%s: %s; the end-of-turn token written is %s, the first of %s in the vocabulary",
                        tokenizer_source, said, token, ", ".join(END_OF_TURN))
            said = "the first known end-of-turn token in the vocabulary"
    elif token not in vocab_ids:
        raise LlamantinoError(f"{path}: the end-of-turn token {token!r} ({said}) is not in the vocabulary")
    eot = vocab_ids[token] if token is not None else None
    if eot is not None:
        writer.add_eot_token_id(eot)
    if "<|eom_id|>" in vocab_ids:
        writer.add_eom_token_id(vocab_ids["<|eom_id|>"])
    writer.add_add_bos_token(adds_bos(tokenizer))
    writer.add_add_eos_token(False)
    template = tokenizer.chat_template
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
    return {"tokenizer": kind, "pre": pre, "eot": eot, "eot_token": token, "eot_from": said if token else None}


# ---------------------------------------------------------------------------------------
# Writing


def _record(exporter: Exporter, fingerprint: str | None) -> str:
    return json.dumps({"llamantino": __version__, "type": exporter.type_name, "fingerprint": fingerprint},
                      sort_keys=True)


def read_record(path: Path) -> dict | None:
    """The llamantino record of a GGUF file, or None when it is no GGUF llamantino wrote."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(path).fields.get(RECORD_KEY)
        if field is None:
            return None
        return json.loads(bytes(field.parts[field.data[0]]).decode("utf-8"))
    except Exception:  # noqa: BLE001 (not a GGUF file, a damaged one: not ours)
        return None


def check_output(output: Path, inputs, overwrite: bool) -> None:
    from llamantino.core.manifest import check_output_location

    if output.suffix != ".gguf":
        raise LlamantinoError(f"{output}: the output must be a .gguf file name")
    check_output_location(output, inputs=[str(p) for p in inputs if p])
    if output.is_dir():
        raise LlamantinoError(f"{output}: is a folder; give a FILE.gguf")
    if output.exists():
        if not overwrite:
            raise LlamantinoError(f"{output}: exists; pass --overwrite to replace it")
        if read_record(output) is None:
            raise LlamantinoError(f"{output}: exists and is no GGUF llamantino wrote; --overwrite replaces only "
                                  "llamantino outputs: move it or choose another name")


def export_gguf(model, output, *, adapter=None, type: str = "f16", overwrite: bool = False,  # noqa: A002
                fingerprint: str | None = None, end_of_turn: str | None = None) -> dict:
    """Write `model` (with `adapter` merged) to the GGUF file `output` and `output`.sha256;
    `end_of_turn`: the token that ends an answer (default: the run's chat format's).
    Returns {"output", "sha256", "type", "family", "tensors", "kept_f16", "bytes", ...}."""
    import gguf

    t0 = time.time()
    output = Path(output)
    model, adapter = resolve_source(model, adapter)
    check_output(output, [model, adapter], overwrite)
    exporter = Exporter(model, adapter, type)  # every check on the inputs happens here, before writing
    tokenizer_source = adapter if adapter is not None and (adapter / "tokenizer.json").is_file() else model
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(output)
    sha_path = output.with_name(output.name + SHA_SUFFIX)
    sha_tmp = temporary_name(sha_path)
    try:
        writer = gguf.GGUFWriter(tmp, exporter.arch)
        exporter.metadata(writer, model.name)
        tok = write_tokenizer(writer, model, tokenizer_source, exporter.vocab_rows, exporter.config,
                              adapter=adapter, end_of_turn_token=end_of_turn)
        writer.add_string(RECORD_KEY, _record(exporter, fingerprint))
        for planned in exporter.plan:
            # shape as numpy has it; the writer stores it reversed, as ggml does
            writer.add_tensor_info(planned.name, planned.shape, _np_dtype(planned.qtype), planned.nbytes,
                                   raw_dtype=planned.qtype)
        writer.open_output_file()
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for planned in exporter.plan:  # one tensor in memory at a time
            writer.write_tensor_data(exporter.tensor(planned))
        for handle in writer.fout or []:
            handle.flush()
            os.fsync(handle.fileno())
        writer.close()
        digest = sha256_file(tmp)
        with open(sha_tmp, "w", encoding="utf-8") as handle:
            handle.write(f"{digest}  {output.name}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, output)
        os.replace(sha_tmp, sha_path)
    except OSError as exc:
        why = "the disk is full" if exc.errno == errno.ENOSPC else first_line(exc)
        raise LlamantinoError(f"{output}: cannot write the GGUF file ({why}); nothing was written") from None
    finally:
        for path in (tmp, sha_tmp):
            if path.exists():
                path.unlink()
        if exporter.adapter is not None:
            exporter.adapter.handle = None
    size = output.stat().st_size
    weights = sum(math.prod(p.shape) for p in exporter.plan)
    return {"output": str(output), "sha256": digest, "type": type, "family": exporter.model_type,
            "architecture": exporter.arch, "tensors": len(exporter.plan), "kept_f16": exporter.kept_f16,
            "bytes": size, "parameters": weights, "tokenizer": tok["tokenizer"], "pre_tokenizer": tok["pre"],
            "end_of_turn": tok["eot_token"], "end_of_turn_from": tok["eot_from"],
            "adapter": str(adapter) if adapter else None, "seconds": round(time.time() - t0, 2)}


def _np_dtype(qtype):
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    return {Q.F32: np.float32, Q.F16: np.float16}.get(qtype, np.float32)


# ---------------------------------------------------------------------------------------
# The stage and the command


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.config import fingerprint as settings_fingerprint

    fingerprint = settings_fingerprint(KIND, cfg)
    output = Path(cfg.output)
    record = read_record(output) if output.is_file() else None
    if record is not None and record.get("fingerprint") == fingerprint and \
            output.with_name(output.name + SHA_SUFFIX).is_file():
        return {"status": "skipped (done)", "headline": {"type": cfg.type}, "metrics": {"output": str(output)}}
    summary = export_gguf(cfg.model, output, adapter=cfg.adapter or None, type=cfg.type,
                          overwrite=overwrite, fingerprint=fingerprint)
    return {"status": "done", "headline": {"type": summary["type"], "MB": round(summary["bytes"] / 1e6, 1),
                                           "kept_f16": len(summary["kept_f16"])},
            "metrics": summary}


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, positional={"model": {"metavar": "MODEL|RUN",
                                                            "help": "model folder, or a run folder holding an adapter"}})


def main(args) -> int:
    from llamantino.core.runner import run_stage_command

    return run_stage_command(KIND, args, positional=("model",))
