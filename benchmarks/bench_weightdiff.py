"""Benchmark `llamantino diff apply` against a plain copy and against the naive rebuild.

    python benchmarks/bench_weightdiff.py               # ~2 GB bfloat16 checkpoint, 2 shards
    python benchmarks/bench_weightdiff.py --gb 0.5      # a smaller one
    python benchmarks/bench_weightdiff.py --baseline-src OLD/src --no-naive   # before/after a change

A LLaMA-shaped checkpoint (hidden 2048, MLP 5504, vocabulary 32000, as many layers as
fit the size) is generated under a temporary folder with its fine-tuned twin (every
weight's lowest mantissa bits changed), and the difference is made once. Then, each in
its own process (so peak RSS is its own), from a warm page cache:

* copy:  shutil.copy of the target's safetensors files (the fastest a rebuild could be);
* diff apply:  llamantino's tensor-by-tensor rebuild, checking every sha256;
* naive:  load both state dicts whole (safetensors load_file), XOR, save_file;
* apply (baseline):  with `--baseline-src`, `diff apply` of another llamantino source tree
  (an earlier version), so that a change is measured against it in the same run.

Throughput is the target checkpoint's bytes per second of work (imports excluded).
Targets: apply at least 0.5x the copy's throughput, and peak RSS at most twice the
largest tensor plus 1 GiB. Everything generated is removed at the end.

The CPU seconds (user + system, all threads) of each method are printed too: on a machine
shared with other jobs the wall-clock ratio moves with their load, the CPU cost much less.
The load average before and after is printed: compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from llamantino.models.weight_files import safetensors_header
from llamantino.release.weightdiff import OpenFiles, make_diff, tensor_hashes, write_at

HIDDEN, MLP, VOCAB = 2048, 5504, 32000


def layer_shapes(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,))]
        shapes += [(p + f"self_attn.{m}_proj.weight", (HIDDEN, HIDDEN)) for m in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (MLP, HIDDEN)), (p + "mlp.up_proj.weight", (MLP, HIDDEN)),
                   (p + "mlp.down_proj.weight", (HIDDEN, MLP))]
    return shapes + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def bf16_bits(rng, shape) -> np.ndarray:
    """Weight-like bfloat16 bits, fast: random sign and mantissa, magnitudes 0.008-0.016."""
    bits = rng.integers(0, 1 << 16, math.prod(shape), dtype=np.uint16)
    return (bits & np.uint16(0x807F)) | np.uint16(0x3C00)


def write_pair(root: Path, gb: float, shards: int = 2) -> dict:
    """Base and target checkpoints of about `gb` GB each, written one tensor at a time."""
    per_layer = 2 * 2 * HIDDEN + 4 * HIDDEN * HIDDEN * 2 + 3 * MLP * HIDDEN * 2
    n_layers = max(1, round((gb * 1e9 - 2 * VOCAB * HIDDEN * 2) / per_layer))
    shapes = layer_shapes(n_layers)
    files_names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    parts = [shapes[i::shards] for i in range(shards)]
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
              "intermediate_size": MLP, "num_hidden_layers": n_layers, "num_attention_heads": 16,
              "num_key_value_heads": 16, "vocab_size": VOCAB, "dtype": "bfloat16"}
    rng = np.random.default_rng(0)
    for name in ("base", "target"):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        weight_map = {n: f for f, part in zip(files_names, parts) for n, _ in part}
        (root / name / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    files = OpenFiles()
    outputs = {name: [files.writing(root / name / f, safetensors_header([(n, "BF16", list(s)) for n, s in part]))
                      for f, part in zip(files_names, parts)] for name in ("base", "target")}
    for shard, part in enumerate(parts):
        position = {name: outputs[name][shard][1] for name in outputs}
        for _, shape in part:
            base = bf16_bits(rng, shape)
            # fine-tuning moves weights by a few units in the last place
            target = base ^ rng.integers(0, 8, base.size, dtype=np.uint16)
            for name, data in (("base", base), ("target", target)):
                write_at(outputs[name][shard][0], data.view(np.uint8), position[name], root / name)
                position[name] += data.nbytes
    files.close()
    return {"tensors": len(shapes), "bytes": sum(math.prod(s) * 2 for _, s in shapes),
            "largest": max(math.prod(s) * 2 for _, s in shapes), "shards": shards, "layers": n_layers}


# Each method: (imports, untimed; the work, timed).
CHILD = {
    "copy": ("""
        import shutil
    """, """
        out.mkdir()
        for path in sorted(Path(target).glob("*.safetensors")):
            shutil.copy(path, out / path.name)
    """),
    "diff apply": ("""
        import llamantino.core.manifest
        from llamantino.release.weightdiff import apply_diff
    """, """
        apply_diff(base, diff, out)
    """),
    "naive": ("""
        import json
        import torch
        from safetensors.torch import load_file, save_file
        def whole(folder):
            out = {}
            for path in sorted(Path(folder).glob("*.safetensors")):
                out.update(load_file(path))
            return out
    """, """
        base_sd, diff_sd = whole(base), whole(diff)
        manifest = json.loads((Path(diff) / "weight_diff.json").read_text())
        result = {}
        for name, bits in diff_sd.items():
            b = base_sd[name]
            result[name] = (bits.view(torch.int16) ^ b.view(torch.int16)).view(torch.bfloat16)
        out.mkdir()
        for spec in manifest["target"]["files"]:
            names = [e["name"] for e in manifest["tensors"] if e["file"] == spec["file"]]
            save_file({n: result[n] for n in names}, out / spec["file"], metadata={"format": "pt"})
    """),
}


# The peak resident set of this process. Linux's ru_maxrss keeps the parent's figure across
# fork and exec, so a child started by a big parent would report at least the parent's size;
# VmHWM belongs to the process's own memory map.
PEAK_RSS = """
def peak_rss():
    import resource
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


BASELINE = "apply (baseline)"
CPU_SECONDS = """
def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime
"""


def measure(kind: str, root: Path, expected: dict, source: str | None = None) -> dict:
    """Run one method in a fresh process (it reports its own seconds, CPU seconds and peak
    RSS), importing llamantino from `source` if given; then check that its output holds the
    target's tensors."""
    imports, work = CHILD["diff apply" if kind == BASELINE else kind]
    script = (
        "import resource\nimport time\nfrom pathlib import Path\n" + PEAK_RSS + CPU_SECONDS +
        f"base, diff, target, out = {str(root / 'base')!r}, {str(root / 'diff')!r}, "
        f"{str(root / 'target')!r}, Path({str(root / 'out')!r})\n"
        + textwrap.dedent(imports) +
        "t0, cpu0 = time.perf_counter(), cpu_seconds()\n"
        "if True:\n" + textwrap.indent(textwrap.dedent(work), "    ") + "\n"
        "print(time.perf_counter() - t0, cpu_seconds() - cpu0, peak_rss())\n")
    os.sync()  # every method starts with no dirty pages of the previous one to write back
    env = {**os.environ, "PYTHONPATH": source} if source else None
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{kind} failed:\n{done.stderr}")
    seconds, cpu, rss = done.stdout.split()[-3:]
    for name in ("config.json", "model.safetensors.index.json"):  # untimed: for the check below
        if not (root / "out" / name).exists():
            shutil.copy(root / "target" / name, root / "out" / name)
    if tensor_hashes(root / "out") != expected:
        raise SystemExit(f"{kind}: the rebuilt tensors are not the target's")
    shutil.rmtree(root / "out")
    return {"seconds": float(seconds), "cpu": float(cpu), "rss": int(rss)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="checkpoint size in GB")
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoints")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each method; the fastest is shown")
    parser.add_argument("--baseline-src", default=None,
                        help="also time `diff apply` of another llamantino source tree: its checkout "
                             "(e.g. a `git worktree` of an earlier commit) or its src/ folder")
    parser.add_argument("--no-naive", action="store_true", help="skip the load-add-save method (slow, ~6 GB)")
    args = parser.parse_args()
    if args.baseline_src:
        # A folder without the package would silently time the installed one instead.
        src = Path(args.baseline_src)
        src = src / "src" if (src / "src" / "llamantino").is_dir() else src
        if not (src / "llamantino" / "release" / "weightdiff.py").is_file():
            raise SystemExit(f"--baseline-src {args.baseline_src}: no llamantino package there (nor under src/)")
        args.baseline_src = str(src)
    methods = ["copy", "diff apply"] + ([BASELINE] if args.baseline_src else []) + ([] if args.no_naive else ["naive"])
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    root = Path(tempfile.mkdtemp(prefix="bench-weightdiff-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        info = write_pair(root, args.gb)
        generated = time.perf_counter() - t0
        t0 = time.perf_counter()
        make_diff(root / "base", root / "target", root / "diff")
        made = time.perf_counter() - t0
        size = info["bytes"]
        print(f"checkpoint: {size / 1e9:.2f} GB bfloat16, {info['tensors']} tensors in {info['shards']} shards, "
              f"largest tensor {info['largest'] / 2**20:.0f} MiB (generated in {generated:.1f} s; "
              f"diff make {made:.1f} s, {size / made / 1e9:.2f} GB/s)")
        expected = tensor_hashes(root / "target")
        results = {}
        for _ in range(args.repeat):  # best of N: the first touch of fresh memory is slow on some VMs
            for kind in methods:
                r = measure(kind, root, expected, args.baseline_src if kind == BASELINE else None)
                if kind not in results or r["seconds"] < results[kind]["seconds"]:
                    results[kind] = r
    finally:
        shutil.rmtree(root, ignore_errors=True)
    copy_rate = size / results["copy"]["seconds"]
    print(f"\n{'method':16s} {'seconds':>8s} {'GB/s':>7s} {'vs copy':>8s} {'CPU s':>6s} {'peak RSS MiB':>13s}")
    for kind, r in results.items():
        rate = size / r["seconds"]
        print(f"{kind:16s} {r['seconds']:8.2f} {rate / 1e9:7.2f} {rate / copy_rate:7.2f}x {r['cpu']:6.2f} "
              f"{r['rss'] / 2**20:13.0f}")
    apply = results["diff apply"]
    ratio = (size / apply["seconds"]) / copy_rate
    bound = 2 * info["largest"] + 2**30
    print(f"\ntarget: apply >= 0.5x copy throughput: {ratio:.2f}x {'PASS' if ratio >= 0.5 else 'FAIL'}")
    print(f"target: apply peak RSS <= 2 x largest tensor + 1 GiB = {bound / 2**20:.0f} MiB: "
          f"{apply['rss'] / 2**20:.0f} MiB {'PASS' if apply['rss'] <= bound else 'FAIL'}")
    if "naive" in results:
        print(f"naive peak RSS / apply peak RSS: {results['naive']['rss'] / apply['rss']:.1f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
