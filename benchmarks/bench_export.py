"""What `llamantino export gguf` costs next to copying the model's safetensors: seconds and peak
memory (RSS) for a LLaMA-shaped model of at least 1 GB, built on the fly with random weights.

    python benchmarks/bench_export.py                  # 1.1 GB float16 model, f16 and q8_0 exports
    python benchmarks/bench_export.py --types f16      # one type
    python benchmarks/bench_export.py --layers 16      # a bigger model

The model (hidden 2048, MLP 5632, 9 layers, vocabulary 32000, GQA 32/8 heads, float16, two
shards; the largest tensor is the 32000 x 2048 embedding, 131 MB) is written with numpy into a
temporary folder. Each measurement runs in a fresh process: its peak RSS (VmHWM, reset after the imports) is reported
in full and above the process's RSS after imports, next to `shutil.copyfile` of the same
safetensors files. The export streams tensor by tensor, so its peak above imports stays near a
few copies of the largest tensor, whatever the model's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

MEASURE = textwrap.dedent("""
    import json, shutil, sys, time
    from pathlib import Path
    what, model, out = sys.argv[1:4]

    def status(key):  # kB, from /proc/self/status (ru_maxrss keeps the parent's peak across exec)
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])

    # the same imports for both, before the baseline is taken (the tokenizer classes alone are ~100 MB)
    from llamantino.release.gguf import export_gguf
    import gguf, torch
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: the peak below is the work's
    t0 = time.time()
    if what == "copy":
        Path(out).mkdir()
        for f in sorted(Path(model).glob("*.safetensors")):
            shutil.copyfile(f, Path(out) / f.name)
        size = sum(f.stat().st_size for f in Path(out).iterdir())
    else:
        size = export_gguf(model, Path(out), type=what)["bytes"]
    seconds = time.time() - t0
    peak = status("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "above_imports_mb": (peak - base) / 1024,
                      "bytes": size}))
""")


def build_model(folder: Path, *, hidden: int, intermediate: int, layers: int, vocab: int, heads: int,
                kv_heads: int) -> tuple[int, int]:
    """A random float16 LLaMA in two safetensors shards; returns (bytes, largest tensor's bytes)."""
    from safetensors.numpy import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from llamantino.demo.demo_base import build_tokenizer

    rng = np.random.default_rng(0)
    head_dim = hidden // heads

    def rand(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    shards = [{"model.embed_tokens.weight": rand(vocab, hidden)}, {}]
    for i in range(layers):
        p = f"model.layers.{i}."
        shard = shards[0] if i < layers // 2 else shards[1]
        shard.update({p + "self_attn.q_proj.weight": rand(hidden, hidden),
                      p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
                      p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
                      p + "self_attn.o_proj.weight": rand(hidden, hidden),
                      p + "mlp.gate_proj.weight": rand(intermediate, hidden),
                      p + "mlp.up_proj.weight": rand(intermediate, hidden),
                      p + "mlp.down_proj.weight": rand(hidden, intermediate),
                      p + "input_layernorm.weight": np.ones(hidden, np.float16),
                      p + "post_attention_layernorm.weight": np.ones(hidden, np.float16)})
    shards[1].update({"model.norm.weight": np.ones(hidden, np.float16), "lm_head.weight": rand(vocab, hidden)})
    folder.mkdir(parents=True)
    weight_map, total, largest = {}, 0, 0
    for n, shard in enumerate(shards):
        name = f"model-{n + 1:05d}-of-00002.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        for key, value in shard.items():
            weight_map[key] = name
            total += value.nbytes
            largest = max(largest, value.nbytes)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
              "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = build_tokenizer((Path(__file__).resolve().parents[1] / "src" / "llamantino" / "assets" / "demo"
                                 / "it_train.txt").read_text(encoding="utf-8").split("\n\n"), vocab_size=2000)
    tokenizer.save_pretrained(folder)
    return total, largest


def measure(what: str, model: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, what, str(model), str(out)], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--layers", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmp = Path(tmp)
        total, largest = build_model(tmp / "model", hidden=2048, intermediate=5632, layers=args.layers, vocab=32000,
                                     heads=32, kv_heads=8)
        print(f"model: {total / 1e9:.2f} GB float16 in 2 shards; largest tensor {largest / 1e6:.0f} MB")
        rows = [("copy safetensors", measure("copy", tmp / "model", tmp / "copy"))]
        for type_name in args.types:
            rows.append((f"export gguf {type_name}", measure(type_name, tmp / "model", tmp / f"m-{type_name}.gguf")))
    copy = rows[0][1]
    header = f"{'':22s} {'seconds':>8s} {'MB/s in':>8s} {'x copy':>7s} {'peak RSS MB':>12s} {'above imports':>14s} " \
             f"{'output MB':>10s}"
    print(header)
    for name, r in rows:
        print(f"{name:22s} {r['seconds']:8.1f} {total / 1e6 / r['seconds']:8.0f} "
              f"{copy['seconds'] / r['seconds']:7.2f} {r['peak_mb']:12.0f} {r['above_imports_mb']:14.0f} "
              f"{r['bytes'] / 1e6:10.0f}")
    print(f"(largest tensor: {largest / 1e6:.0f} MB; 'x copy' is the export's speed as a fraction of copying)")
    for name, r in rows[1:]:
        print("RESULT " + json.dumps({"benchmark": "export", "figure": f"{name} seconds (1 GB model)",
                                      "ours": round(r["seconds"], 2), "baseline": round(copy["seconds"], 2),
                                      "baseline_name": "copy safetensors"}))
        print("RESULT " + json.dumps({"benchmark": "export", "figure": f"{name} peak RSS above imports (MB)",
                                      "ours": round(r["above_imports_mb"]), "baseline": round(copy["above_imports_mb"]),
                                      "baseline_name": "copy safetensors"}))


if __name__ == "__main__":
    main()
