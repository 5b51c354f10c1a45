"""`llamantino doctor`: what a bug report needs, and what every `auto` setting picks here and why.

    llamantino doctor            # versions, devices, CPU flags, the `auto` choices (a few seconds)
    llamantino doctor --smoke    # and a forward + backward pass of a tiny model through each path
                                 # `auto` picks, against the plain path (under a minute on a CPU)

The report follows `torch.utils.collect_env`, `accelerate env` and `python -m bitsandbytes`, with
what matters to llamantino next to it: the CPU flags that change bitsandbytes' 4-bit CPU path
(AVX512-BF16, AMX), the optional kernels (flash-attn, Liger, Triton and a C compiler for it),
CTranslate2's CUDA devices. `--smoke` builds a tiny random LLaMA (nothing downloaded) and prints
one line per path: `ok`, `fell back: …` (auto declined or left a path that does not run here),
`differs: …` (loss or gradients differ from the plain path) or `fails: …` (it raised); the exit
status is 1 when a path differs or fails.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from llamantino import __version__

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# (what the report calls it, its distribution name, the module it imports as)
PACKAGES = (("transformers", "transformers", "transformers"), ("peft", "peft", "peft"),
            ("accelerate", "accelerate", "accelerate"), ("bitsandbytes", "bitsandbytes", "bitsandbytes"),
            ("trl", "trl", "trl"), ("datasets", "datasets", "datasets"),
            ("flash-attn", "flash-attn", "flash_attn"), ("flash-attn 3", None, "flash_attn_interface"),
            ("liger-kernel", "liger-kernel", "liger_kernel"), ("triton", "triton", "triton"),
            ("lm-eval", "lm-eval", "lm_eval"), ("ctranslate2", "ctranslate2", "ctranslate2"))


def add_arguments(parser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="also run a tiny model forward and backward through each path `auto` picks here, "
                             "against the plain eager/SDPA path (under a minute on a CPU)")


def main(args) -> int:
    for line in report():
        print(line, flush=True)
    if not args.smoke:
        return 0
    print(flush=True)
    failed = False
    for line in smoke(echo=True):
        failed |= line.verdict.startswith(("differs", "fails"))
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------
# The report


def version(distribution: str | None, module: str) -> str:
    """Installed version from package metadata (nothing imported), or `not installed`."""
    if distribution:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    if importlib.util.find_spec(module) is not None:
        return "installed (version unknown)"
    return "not installed"


def cpu_info() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo (Linux); ('', set()) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor(), set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def training_device():
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def report() -> list[str]:
    import torch

    rows = [("llamantino", __version__),
            ("python", f"{platform.python_version()} ({platform.python_implementation()}) on {platform.platform()}"),
            ("torch", f"{torch.__version__}; CUDA build {torch.version.cuda or 'none'}; ROCm build "
                      f"{getattr(torch.version, 'hip', None) or 'none'}"
                      + (f"; cuDNN {torch.backends.cudnn.version()}" if torch.cuda.is_available() else ""))]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"GPU {i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                                     f"{props.major}.{props.minor}"))
    else:
        rows.append(("GPUs", "none visible to torch"))
    name, flags = cpu_info()
    rows.append(("CPU", f"{name or platform.machine()}, {os.cpu_count()} logical cores"))
    rows.append(("CPU flags", ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS)
                 + f"; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"))
    for label, distribution, module in PACKAGES:
        value = version(distribution, module)
        try:  # a package that is installed but does not import is reported, not raised
            if label == "bitsandbytes" and value != "not installed":
                value += ("; its AVX512-BF16 4-bit CPU path: "
                          + ("available, turned off at load (the same numbers on every CPU)" if bnb_avx512bf16()
                             else "not on this CPU"))
            if label == "ctranslate2" and value != "not installed":
                import ctranslate2

                value += f"; CUDA devices it sees: {ctranslate2.get_cuda_device_count()}"
        except Exception as exc:  # noqa: BLE001
            from llamantino.core.errors import first_line

            value += f"; does not import: {first_line(exc)}"
        rows.append((label, value))
    from llamantino.models.modeling import c_compiler

    rows.append(("C compiler", c_compiler() or "none on PATH (Triton needs one: gcc or clang, or set CC)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += ["", f"auto settings on this machine ({training_device()}, a LLaMA-family model):"]
    table = [("setting", "stage", "picks", "why")] + auto_choices()
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in table]
    lines.append("  (other `auto` settings follow the model or the data, not the machine)")
    return lines


def bnb_avx512bf16() -> bool:
    """Whether bitsandbytes takes its AVX512-BF16 4-bit inference path on this CPU."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def auto_choices() -> list[tuple[str, str, str, str]]:
    """(setting, stages, what `auto` picks here, why) for every machine-dependent `auto`."""
    from llamantino.models.modeling import attention_choice
    from llamantino.train import common, speed
    from llamantino.train.adapt import Config as AdaptConfig
    from llamantino.train.instruct import Config as InstructConfig

    device = training_device()
    gpu = device.type == "cuda"
    dtype = common.resolve_compute_dtype("auto", device)
    rows = [("compute_dtype", "all training", dtype,
             "bfloat16 on a GPU that has it" if dtype == "bfloat16" else
             "the GPU has no bfloat16" if gpu else "CPU: bfloat16 matmuls are many times slower than float32")]
    attention, why = attention_choice(tiny_config(), str(device), dtype)
    rows.append(("attn_implementation", "all training", attention, why))
    adapt = speed.resolve(AdaptConfig(), device, "llama", dtype)
    full = speed.resolve(InstructConfig(), device, "llama", dtype)
    rows.append(("activation_checkpointing", "all training", adapt.checkpointing,
                 "the default (gradient_checkpointing true): every block recomputed"))
    for setting in ("compile", "kernels", "fused_loss"):
        a, f = getattr(adapt, setting), getattr(full, setting)
        if (a, adapt.why.get(setting)) == (f, full.why.get(setting)):
            rows.append((setting, "all training", a, adapt.why.get(setting, "")))
        else:
            rows.append((setting, "adapt, sft", a, adapt.why.get(setting, "")))
            rows.append((setting, "instruct", f, full.why.get(setting, "")))
    rows.append(("optimizer", "adapt, sft", "paged_adamw_32bit" if gpu else "adamw_torch",
                 "the paper's paged AdamW" if gpu else "paged optimizers need a CUDA device; the same update rule"))
    rows.append(("fused_optimizer", "instruct", "on" if gpu else "off",
                 "AdamW's fused kernel on a GPU" if gpu else "auto: on a GPU only"))
    try:
        import ctranslate2

        count = ctranslate2.get_cuda_device_count()
        types = sorted(ctranslate2.get_supported_compute_types("cuda" if count else "cpu"))
        rows.append(("compute_type", "translate", "auto", f"CTranslate2 picks the fastest of {', '.join(types)}; "
                     f"device cpu by default, {count} CUDA device(s) for --device cuda"))
    except Exception as exc:  # noqa: BLE001  (not installed, or does not import)
        rows.append(("compute_type", "translate", "-", f"ctranslate2 unusable here ({type(exc).__name__})"))
    return rows


def tiny_config(vocab_size: int = 512):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       tie_word_embeddings=False)


# ---------------------------------------------------------------------------------------
# The smoke test


class Line:
    def __init__(self, path: str, choice: str, verdict: str):
        self.path, self.choice, self.verdict = path, choice, verdict

    def __str__(self) -> str:
        return f"{self.path.ljust(14)}{self.choice.ljust(22)}{self.verdict}"


def smoke(echo: bool = False) -> list[Line]:
    """One line per path `auto` picks here, each against the plain path of the same tiny model."""
    from llamantino.models.modeling import attention_choice
    from llamantino.train import common, speed
    from llamantino.train.adapt import Config as AdaptConfig
    from llamantino.train.instruct import Config as InstructConfig

    started = time.time()
    device = training_device()
    dtype = common.resolve_compute_dtype("auto", device)
    tolerance = {"loss_tol": 1e-5, "grad_tol": 1e-4} if dtype == "float32" else {"loss_tol": 2e-2, "grad_tol": 8e-2}
    lines = []

    def emit(line: Line) -> None:
        lines.append(line)
        if echo:
            print(line, flush=True)

    if echo:
        print(f"smoke test: a tiny LLaMA (2 layers, hidden 64), packed rows, {dtype} on {device}; each path against "
              "the plain one (eager, SDPA, torch kernels, nothing compiled)", flush=True)
    with tempfile.TemporaryDirectory(prefix="llamantino-doctor-") as tmp:
        folder = build_tiny_model(Path(tmp) / "model")
        run = Runner(folder, device, dtype, tolerance)
        emit(guarded("4-bit + LoRA", "nf4, double quant", run.four_bit))
        attention, why = attention_choice(tiny_config(), str(device), dtype)
        declined = "does not run here" in why
        if attention == "sdpa":
            emit(Line("attention", "sdpa", f"fell back: {why}" if declined else "ok (the plain path" +
                      (f": {why})" if why else ")")))
        else:
            emit(guarded("attention", attention, lambda: run.attention(attention)))
        full = speed.resolve(InstructConfig(), device, "llama", dtype)
        if full.compile == "none":
            emit(Line("compile", "none", f"ok (the plain path: {full.why.get('compile', '')})"))
        else:
            emit(guarded("compile", "blocks", run.compiled))
        adapt = speed.resolve(AdaptConfig(), device, "llama", dtype)
        if adapt.kernels == "torch" and adapt.fused_loss == "chunked":
            emit(Line("liger", "torch, chunked", f"ok (the plain path: {adapt.why.get('kernels', '')})"))
        else:
            emit(guarded("liger", f"{adapt.kernels}, {adapt.fused_loss}",
                         lambda: run.liger(adapt.kernels == "liger", adapt.fused_loss == "liger")))
        if device.type == "cuda":
            emit(guarded("fused AdamW", "on", lambda: fused_adamw(device)))
        else:
            emit(Line("fused AdamW", "off", "ok (the plain path: auto takes the fused kernel on a GPU)"))
        emit(guarded("CTranslate2", ctranslate2_devices(), lambda: run.ctranslate2()))
    if echo:
        print(f"smoke test took {time.time() - started:.0f} s", flush=True)
    return lines


def guarded(path: str, choice: str, check) -> Line:
    """`check()` -> verdict; an exception is the verdict `fails: …`."""
    from llamantino.core.errors import first_line

    try:
        return Line(path, choice, check())
    except Exception as exc:  # noqa: BLE001  (a path that raises is what the smoke test is for)
        return Line(path, choice, f"fails: {first_line(exc)}")


def build_tiny_model(folder: Path) -> Path:
    """A random tiny LLaMA and its byte-level BPE tokenizer (learnt on bundled text), saved."""
    from llamantino.demo.demo_base import ASSETS_DIR, build_model, build_tokenizer, read_paragraphs

    tokenizer = build_tokenizer(read_paragraphs([ASSETS_DIR / "demo" / "en_train.txt"])[:40], vocab_size=512)
    model = build_model(tokenizer, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        max_position_embeddings=256, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def packed_rows(vocab: int, device):
    """Two rows of three packed documents each (positions restarting), targets after each start."""
    import torch

    from llamantino.models.loss import IGNORE

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 48), generator=gen)
    positions = torch.cat([torch.arange(14), torch.arange(20), torch.arange(14)]).repeat(2, 1)
    labels = ids.clone()
    labels[:, [0, 14, 34]] = IGNORE
    return ids.to(device), positions.to(device), labels.to(device)


def compare(reference, other, *, loss_tol: float, grad_tol: float) -> str:
    """`ok (…)` or `differs: …` for two (loss, {name: gradient}) results."""
    (loss0, grads0), (loss1, grads1) = reference, other
    worst = max(float((grads1[k] - grads0[k]).abs().max()) / max(float(grads0[k].abs().max()), 1e-12)
                for k in grads0)
    loss_diff = abs(loss1 - loss0) / max(1.0, abs(loss0))
    if loss_diff > loss_tol or worst > grad_tol or not all(float(g.abs().max()) > 0 for g in grads1.values()):
        return f"differs: loss {loss1:.6f} vs {loss0:.6f}, gradients off by up to {worst:.1e} of the largest"
    return f"ok (loss {loss1:.6f} vs {loss0:.6f}, gradients within {worst:.1e} of the largest)"


class Runner:
    """Builds the tiny model's variants and runs them on packed rows."""

    def __init__(self, folder: Path, device, dtype: str, tolerance: dict):
        self.folder, self.device, self.dtype, self.tolerance = folder, device, dtype, tolerance
        self.batch = packed_rows(512, device)
        self._plain = None

    def autocast(self):
        import torch

        on = self.device.type == "cuda" and self.dtype != "float32"
        return torch.autocast(self.device.type, dtype=getattr(torch, self.dtype)) if on else contextlib.nullcontext()

    def base(self, *, attention: str = "sdpa", in_4bit: bool = False):
        from llamantino.models.modeling import load_causal_lm

        return load_causal_lm(str(self.folder), dtype=self.dtype, load_in_4bit=in_4bit, compute_dtype=self.dtype,
                              device=str(self.device), attn_implementation=attention)

    def lora(self, base):
        """LoRA on every linear layer of the blocks, the same weights every time (B not zero)."""
        import torch
        from peft import LoraConfig, get_peft_model

        for param in base.parameters():
            param.requires_grad_(False)
        torch.manual_seed(1)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        model.train()
        return model

    def loss_and_grads(self, model, fused: str = "chunked", guard=None):
        """Loss and LoRA gradients through the training loss (its head check runs in eval mode first)."""
        from llamantino.models.loss import IGNORE
        from llamantino.train.qlora import CausalLMLoss
        from llamantino.train.speed import eager

        ids, positions, labels = self.batch
        with eager():  # its head check, as training makes it before compiling
            loss_fn = CausalLMLoss(model, 16, fused=fused)

        def step():
            model.zero_grad(set_to_none=True)
            with self.autocast():
                loss = loss_fn(ids, positions, labels, (labels[:, 1:] != IGNORE).sum())
            loss.backward()
            return float(loss.detach())

        loss = guard.run(step, lambda: model.zero_grad(set_to_none=True)) if guard else step()
        return loss, {k: p.grad.float().clone() for k, p in model.named_parameters() if p.requires_grad}

    def plain(self):
        if self._plain is None:
            self._plain = self.loss_and_grads(self.lora(self.base()))
        return self._plain

    def four_bit(self) -> str:
        """The 4-bit base against a full-precision one holding its dequantised weights: the same
        numbers but for bitsandbytes' kernels (the head check's eval-mode pass runs first)."""
        import bitsandbytes.functional as bnbf

        quantized = self.base(in_4bit=True)
        reference = self.base()
        layers = dict(reference.named_modules())
        for name, module in quantized.named_modules():
            if type(module).__name__ == "Linear4bit":
                weight = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state)
                layers[name].weight.data.copy_(weight.to(layers[name].weight.dtype))
        return compare(self.loss_and_grads(self.lora(reference)), self.loss_and_grads(self.lora(quantized)),
                       **self.tolerance)

    def attention(self, attention: str) -> str:
        return compare(self.plain(), self.loss_and_grads(self.lora(self.base(attention=attention))),
                       **self.tolerance)

    def compiled(self) -> str:
        from llamantino.train import speed

        model = self.lora(self.base())
        speed.compile_blocks(model.get_base_model())
        guard = speed.CompileGuard(compiled=True)
        result = self.loss_and_grads(model, guard=guard)
        if guard.fell_back:
            return f"fell back: eager after {guard.fell_back}"
        return compare(self.plain(), result, **self.tolerance)

    def liger(self, kernels: bool, fused: bool) -> str:
        from llamantino.train import speed

        model = self.lora(self.base())
        if kernels:
            speed.apply_liger_kernels(model.get_base_model())
        return compare(self.plain(), self.loss_and_grads(model, fused="liger" if fused else "chunked"),
                       **self.tolerance)

    def ctranslate2(self) -> str:
        """The tiny model converted to CTranslate2 and scored on every device it sees, against
        transformers' float32 log-probabilities."""
        import ctranslate2
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        out = self.folder.parent / "ct2"
        ctranslate2.converters.TransformersConverter(str(self.folder)).convert(str(out), quantization="float32")
        tokenizer = AutoTokenizer.from_pretrained(self.folder)
        ids = [tokenizer.bos_token_id] + self.batch[0][0, :30].tolist()
        model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
        figures = []
        for device in ["cpu"] + (["cuda"] if ctranslate2.get_cuda_device_count() else []):
            generator = ctranslate2.Generator(str(out), device=device, compute_type="float32")
            scored = generator.score_batch([tokenizer.convert_ids_to_tokens(ids)])[0].log_probs
            error = float((torch.tensor(scored) - expected).abs().max())
            figures.append(f"{device} {error:.1e}")
            if error > 1e-3:
                return f"differs: log-probabilities off transformers' by {', '.join(figures)}"
        return f"ok (log-probabilities within {', '.join(figures)} of transformers')"


def ctranslate2_devices() -> str:
    try:
        import ctranslate2
    except ImportError:
        return "not installed"
    count = ctranslate2.get_cuda_device_count()
    return f"cpu, cuda ({count})" if count else "cpu"


def fused_adamw(device) -> str:
    """Three steps of AdamW with and without the fused kernel from the same weights and gradients."""
    import torch

    from llamantino.train import common

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(64, 32, device=device)), torch.nn.Parameter(torch.randn(32, device=device))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    plain, _ = common.make_optimizer(weights, "adamw_torch", 1e-2, 0.01, device)
    fused = common.fuse_adamw(common.make_optimizer(copies, "adamw_torch", 1e-2, 0.01, device)[0])
    for step in range(3):
        for group in (weights, copies):
            for w in group:
                w.grad = torch.full_like(w, 0.1 * (step + 1)) + w.detach()
        plain.step()
        fused.step()
    worst = max(float((a - b).abs().max()) for a, b in zip(weights, copies))
    figures = f"weights within {worst:.1e} of AdamW's after 3 steps"
    return f"ok ({figures})" if worst <= 1e-5 else f"differs: {figures}"


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(prog="llamantino doctor")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
