"""4-bit experts for QLoRA on mixtures of experts.

In transformers 5 the experts of Mixtral, Qwen3-MoE, gpt-oss and their kin are one module holding
fused 3-D parameters (`gate_up_proj`, `down_proj`: experts x out x in, or experts x in x out when
`is_transposed`), not `nn.Linear` layers, so bitsandbytes leaves them in the compute dtype: on
Qwen3-30B-A3B about 95% of the weights. `quantize_experts` turns each such module, after loading,
into a 4-bit one:

* every expert's matrix is quantized on its own with `bitsandbytes.functional.quantize_4bit`
  (NF4 or FP4, double quantization, blocks of 64: the settings of the model's `Linear4bit` layers);
  the packed bytes stay under the parameter's own name (`gate_up_proj`, a frozen uint8 parameter
  carrying `llamantino_4bit_numel`, its count of weights), the block scales beside it as buffers;
* the forward runs the experts the router picked one at a time, as transformers' eager loop does,
  through `_Dequantized4bitMatmul`: the expert's matrix is dequantized for its matmul and freed,
  and dequantized again in the backward pass for the input's gradient (as bitsandbytes' own
  `MatMul4Bit`), so at most one expert's matrix exists in full at any time and none is kept for
  the backward pass;
* LoRA on the experts keeps PEFT's format: PEFT's `target_parameters` wraps the parameter in a
  `ParamWrapper`, which in its forward adds the low-rank delta to the whole 3-D weight
  (a full-size tensor of every expert, impossible on 4-bit storage without dequantizing all of
  it). `ExpertsLoraWrapper` is that `ParamWrapper` (same layers, same names and shapes, same
  per-expert rank: `lora_A` (rank x experts, in), `lora_B` (out, rank x experts)), so saving,
  loading, merging into the full-precision model and releasing adapters are unchanged; only its
  forward differs: it hands its factors to the 4-bit experts, which add
  `scaling * x A_e^T B_e^T` per expert. `lora_config` registers it with a `LoraConfig`.

The module keeps its class's own gate (`_apply_gate`: gpt-oss's clamped, interleaved SwiGLU, or
`act(gate) * up`), activation and biases (kept in full precision, frozen). Dequantization goes
through bitsandbytes' own kernels, never the AVX512-BF16 path `modeling.plain_4bit_on_every_cpu`
turns off for `Linear4bit` (that one repacks a `Linear4bit`'s weight; nothing here does). Each
expert is quantized and dequantized as a flat vector: bitsandbytes' CPU kernel dequantizes a 2-D
shape block by row, wrong when a row is not a whole number of blocks.

Experts laid out otherwise (no gate, a norm after each expert, expert parallelism) are not
quantized: `check_expert_layout` says so in one line before loading, with the memory they take.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math

import torch

from llamantino.core.errors import LlamantinoError

log = logging.getLogger(__name__)

EXPERT_PARAMETERS = ("gate_up_proj", "down_proj")
BLOCKSIZE = 64  # bitsandbytes' 4-bit block, as in its Linear4bit layers


def is_fused_experts(module) -> bool:
    """A transformers experts module (`@use_experts_implementation`) with 3-D expert weights."""
    return hasattr(module, "is_transposed") and any(
        isinstance(getattr(module, name, None), torch.Tensor) and getattr(module, name).dim() == 3
        for name in ("gate_up_proj", "down_proj", "up_proj"))


def can_quantize(module) -> bool:
    """Whether `Experts4bit` runs this experts module: gated (gate_up_proj + down_proj, 3-D), no
    norm after the experts, not split across ranks by expert parallelism."""
    return (is_fused_experts(module) and getattr(module, "has_gate", False)
            and not getattr(module, "has_post_expert_norm", False) and not getattr(module, "_is_expert_parallel", False)
            and all(isinstance(getattr(module, n, None), torch.Tensor) and getattr(module, n).dim() == 3
                    for n in EXPERT_PARAMETERS))


def check_expert_layout(model, model_type: str, dtype: torch.dtype) -> dict:
    """Before a 4-bit load, on the model built on the meta device (nothing allocated): one line for
    the fused experts that will stay in `dtype`, with their memory. Returns {"quantized": N,
    "full_precision": N}, the expert weights of each kind."""
    counts = {"quantized": 0, "full_precision": 0}
    kept = set()
    for module in model.modules():
        if not is_fused_experts(module):
            continue
        numel = sum(p.numel() for p in module.parameters(recurse=False) if p.dim() == 3)
        if can_quantize(module):
            counts["quantized"] += numel
        else:
            counts["full_precision"] += numel
            kept.add(type(module).__name__)
    if counts["full_precision"]:
        size = counts["full_precision"] * torch.tensor([], dtype=dtype).element_size()
        shown = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
        log.warning("%s: the experts of %s have a layout the 4-bit experts do not cover (no gate, a norm after "
                    "each expert, or expert parallelism): their %s weights stay in %s, %s",
                    model_type, ", ".join(sorted(kept)), f"{counts['full_precision']:,}", str(dtype).removeprefix("torch."),
                    shown)
    return counts


def quantize_experts(model, *, quant_type: str = "nf4", double_quant: bool = True) -> int:
    """Turn every experts module of `model` that `can_quantize` into a 4-bit one, module by module
    (each module's full-precision weights are freed before the next is quantized). Returns the
    number of expert weights now held in 4 bits."""
    total = 0
    for module in list(model.modules()):
        if can_quantize(module) and not isinstance(module, Experts4bit):
            total += Experts4bit.convert(module, quant_type=quant_type, double_quant=double_quant)
    if total and not isinstance(model, SavesNo4bitExperts):
        SavesNo4bitExperts.mix_into(model)
    return total


def has_4bit_experts(model) -> bool:
    return any(isinstance(m, Experts4bit) for m in model.modules())


def refuse_4bit_experts(model, where, doing: str) -> None:
    """One line when `model` holds experts packed in 4-bit: its state dict holds them as bytes whose
    scales are not in it (no loader reads them back), and an adapter cannot be folded into them."""
    if has_4bit_experts(model):
        raise LlamantinoError(f"{where}: cannot {doing}: the model's experts are held packed in 4-bit "
                              "(load_in_4bit), which no loader reads back; load the model in 16 or 32 bits "
                              "for that (a LoRA adapter trained on it saves and merges as usual)")


class SavesNo4bitExperts:
    """Mixed into the class of a model whose experts `quantize_experts` packed (keeping the class's
    own name): `save_pretrained` refuses in one line, before writing anything, while experts are
    4-bit, instead of writing packed expert tensors that no loader can read (transformers' own
    4-bit serialization knows bitsandbytes' layers, not these). Saving a PEFT adapter on the model
    is unchanged: PEFT writes the adapter's weights, not the model's."""

    _classes: dict = {}

    @classmethod
    def mix_into(cls, model) -> None:
        base = type(model)
        if base not in cls._classes:
            cls._classes[base] = type(base.__name__, (cls, base), {"__qualname__": base.__qualname__,
                                                                   "__module__": base.__module__})
        model.__class__ = cls._classes[base]

    def save_pretrained(self, save_directory, *args, **kwargs):
        refuse_4bit_experts(self, save_directory, "save the model")
        return super().save_pretrained(save_directory, *args, **kwargs)


class Experts4bit(torch.nn.Module):
    """Mixed into an experts module's own class by `convert` (as FSDP2's `fully_shard` makes
    `FSDP<Class>`): the module keeps its attributes, gate, biases and parameter names; its expert
    matrices become packed 4-bit bytes and its forward the per-expert 4-bit loop."""

    _classes: dict = {}

    @classmethod
    def convert(cls, module, *, quant_type: str, double_quant: bool) -> int:
        import bitsandbytes.functional as bnbf

        base = type(module)
        if base not in cls._classes:
            cls._classes[base] = type(f"Experts4bit{base.__name__}", (Experts4bit, base), {})
        numel = 0
        module._4bit = {"quant_type": quant_type, "double_quant": double_quant, "shapes": {}}
        for name in EXPERT_PARAMETERS:
            weight = getattr(module, name).detach()
            experts = weight.shape[0]
            packed, absmax, offset, absmax2, codes = [], [], [], [], None
            for e in range(experts):
                q, state = bnbf.quantize_4bit(weight[e].reshape(-1), blocksize=BLOCKSIZE,
                                              compress_statistics=double_quant, quant_type=quant_type)
                packed.append(q.reshape(-1))
                absmax.append(state.absmax)
                if state.nested:
                    offset.append(state.offset.reshape(()))
                    absmax2.append(state.state2.absmax)
                codes = (state.code, state.state2.code if state.nested else None, state.dtype)
            delattr(module, name)  # the full-precision stack goes now, before the next one is made
            storage = torch.nn.Parameter(torch.stack(packed), requires_grad=False)
            storage.llamantino_4bit_numel = weight.numel()  # weights it holds, counted once
            module.register_parameter(name, storage)
            module.register_buffer(f"{name}_absmax", torch.stack(absmax), persistent=False)
            if double_quant:
                module.register_buffer(f"{name}_offset", torch.stack(offset), persistent=False)
                module.register_buffer(f"{name}_absmax2", torch.stack(absmax2), persistent=False)
                module.register_buffer(f"{name}_code2", codes[1], persistent=False)
            module.register_buffer(f"{name}_code", codes[0], persistent=False)
            module._4bit["shapes"][name] = tuple(weight.shape)
            module._4bit["dtype"] = codes[2]
            numel += weight.numel()
            del weight
        module.__class__ = cls._classes[base]
        return numel

    # -- storage -------------------------------------------------------------------------

    @property
    def quantized_parameters(self) -> list[str]:
        """Names of the expert weights held in 4-bit (the full-precision parameters' names)."""
        return list(self._4bit["shapes"])

    def expert_shape(self, name: str) -> tuple[int, int, int]:
        """(experts, a, b): the full-precision parameter's shape."""
        return self._4bit["shapes"][name]

    def dequantized(self, name: str, expert: int) -> torch.Tensor:
        """One expert's matrix of parameter `name`, in the dtype it was loaded in."""
        import bitsandbytes.functional as bnbf

        _, a, b = self.expert_shape(name)
        state2 = None
        if self._4bit["double_quant"]:
            state2 = bnbf.QuantState(absmax=getattr(self, f"{name}_absmax2")[expert],
                                     code=getattr(self, f"{name}_code2"), blocksize=256, dtype=torch.float32)
        state = bnbf.QuantState(absmax=getattr(self, f"{name}_absmax")[expert], shape=torch.Size([a * b]),
                                code=getattr(self, f"{name}_code"), blocksize=BLOCKSIZE,
                                quant_type=self._4bit["quant_type"], dtype=self._4bit["dtype"],
                                offset=getattr(self, f"{name}_offset")[expert] if state2 is not None else None,
                                state2=state2)
        packed = getattr(self, name)[expert].reshape(-1, 1)
        return bnbf.dequantize_4bit(packed, state).reshape(a, b)

    def dequantized_stack(self, name: str) -> torch.Tensor:
        """Every expert of `name` dequantized: the full-precision parameter as the 4-bit forward
        sees it (for references and tests; the forward never builds it)."""
        return torch.stack([self.dequantized(name, e) for e in range(self.expert_shape(name)[0])])

    def lora_shape_view(self, name: str) -> torch.Tensor:
        """A stand-in of the full-precision parameter for PEFT's bookkeeping: its shape, dtype and
        device, no memory (one element, broadcast)."""
        device = getattr(self, name).device
        return torch.zeros((), dtype=self._4bit["dtype"], device=device).expand(*self.expert_shape(name))

    # -- forward -------------------------------------------------------------------------

    def forward(self, hidden_states, top_k_index, top_k_weights):
        """transformers' eager experts loop (same expert order, same token order), each projection
        through the 4-bit matmul, plus the expert's LoRA when an `ExpertsLoraWrapper` is active."""
        final = torch.zeros_like(hidden_states)
        num_experts = self.expert_shape("gate_up_proj")[0]
        by_expert = top_k_index.transpose(0, 1)  # (top_k, tokens): the order the eager loop visits them
        for expert in torch.unique(top_k_index).tolist():
            if expert >= num_experts:  # expert parallelism's sentinel
                continue
            top_k_pos, token_idx = torch.where(by_expert == expert)
            hidden = self._project("gate_up_proj", hidden_states[token_idx], expert)
            hidden = self._project("down_proj", self._apply_gate(hidden), expert)
            hidden = hidden * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, hidden.to(final.dtype))
        return final

    def _project(self, name: str, x: torch.Tensor, expert: int) -> torch.Tensor:
        out = _Dequantized4bitMatmul.apply(x, self, name, expert)
        if getattr(self, "has_bias", False):
            out = out + getattr(self, f"{name}_bias")[expert]
        for lora_a, lora_b, scaling in getattr(self, "_active_lora", {}).get(name, ()):
            num_experts = self.expert_shape(name)[0]
            rank = lora_a.shape[0] // num_experts
            a = lora_a[expert * rank:(expert + 1) * rank]  # (rank, in): PEFT's A reshaped (experts, rank, in)
            b = lora_b[:, expert::num_experts]             # (out, rank): PEFT's B reshaped (out, rank, experts)
            out = out + (x.to(a.dtype) @ a.T @ b.T * scaling).to(out.dtype)
        return out


class _Dequantized4bitMatmul(torch.autograd.Function):
    """x @ W_e^T (W_e @ x for a transposed layout) with W_e dequantized in the forward and again in
    the backward; nothing but the 4-bit storage is kept, the weight gets no gradient."""

    @staticmethod
    def forward(ctx, x, experts, name, expert):
        weight = experts.dequantized(name, expert)
        ctx.experts, ctx.name, ctx.expert, ctx.dtype = experts, name, expert, x.dtype
        x = x.to(weight.dtype)
        return x @ weight if experts.is_transposed else x @ weight.T

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        weight = ctx.experts.dequantized(ctx.name, ctx.expert)
        grad = grad.to(weight.dtype)
        grad_x = grad @ weight.T if ctx.experts.is_transposed else grad @ weight
        return grad_x.to(ctx.dtype), None, None, None


# ---------------------------------------------------------------------------------------
# LoRA on 4-bit experts, in PEFT's ParamWrapper format


def lora_config(config, model=None):
    """`config` (a peft LoraConfig) made to put `ExpertsLoraWrapper` on 4-bit experts (when
    `model` has any, or always when `model` is None). Returns the config."""
    if model is None or has_4bit_experts(model):
        config._register_custom_module({Experts4bit: wrapper_class()})
    return config


def adapter_config(model, adapter):
    """The PEFT config of a saved `adapter`, ready to load onto `model`: with its expert LoRA on
    `ExpertsLoraWrapper` when `model` has 4-bit experts."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(adapter))
    if getattr(config, "target_parameters", None) and hasattr(config, "_register_custom_module"):
        lora_config(config, model)
    return config


@functools.cache
def wrapper_class():
    """`ExpertsLoraWrapper`, made on first use (peft loads only when LoRA is used)."""
    from peft.tuners.lora.layer import ParamWrapper

    class ExpertsLoraWrapper(ParamWrapper):
        """PEFT's `ParamWrapper` over a 4-bit experts parameter: same LoRA layers (names, shapes,
        init, scaling), its factors handed to `Experts4bit` in the forward instead of a
        parametrization of the whole 3-D weight."""

        def __init__(self, base_layer, adapter_name, parameter_name=None, **kwargs):
            if parameter_name is None:
                raise LlamantinoError("LoRA on 4-bit experts goes on their parameters (target_parameters), "
                                      "not on the experts module (target_modules)")
            super().__init__(base_layer, adapter_name, parameter_name=parameter_name, **kwargs)

        def get_param(self):
            return self.get_base_layer().lora_shape_view(self.parameter_name)

        @contextlib.contextmanager
        def _activate_lora(self, active_adapters):
            adapters = [a for a in active_adapters if a in self.lora_A]
            if not adapters:
                yield
                return
            experts = self.get_base_layer()
            active = experts.__dict__.setdefault("_active_lora", {})
            active[self.parameter_name] = [(self.lora_A[a].weight, self.lora_B[a].weight, self.scaling[a])
                                           for a in adapters]
            try:
                yield
            finally:
                active.pop(self.parameter_name, None)

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            raise LlamantinoError("an adapter cannot be merged into 4-bit experts: merge it into the "
                                  "full-precision model (llamantino merge)")

        def unmerge(self) -> None:
            raise LlamantinoError("4-bit experts hold no merged adapter")

    # PEFT tells a parameter wrapper (to nest the next parameter's around it) by its class name.
    ExpertsLoraWrapper.__name__ = ParamWrapper.__name__
    return ExpertsLoraWrapper


def stored_bytes(module) -> int:
    """Bytes an `Experts4bit` module holds for its experts (packed weights and scales)."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters(recurse=False))
               + list(module.buffers(recurse=False)))


def full_precision_bytes(module) -> int:
    """Bytes its experts would take in the dtype they were loaded in."""
    size = torch.tensor([], dtype=module._4bit["dtype"]).element_size()
    return sum(math.prod(shape) for shape in module._4bit["shapes"].values()) * size
