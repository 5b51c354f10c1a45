"""Sentences per second: `llamantino translate` (the batched CTranslate2 engine) against
`argostranslate.translate.translate()` called once per sentence (how the paper's Argos
Translate run works), on the same package, the same sentences and the same thread settings,
in one run.

    python benchmarks/bench_translate.py                         # Transformer-base stand-in, 1 and 2 cores
    python benchmarks/bench_translate.py --compute-types auto,float32 --layouts 1x1,1x2,2x1
    python benchmarks/bench_translate.py --model translate-en_it.argosmodel   # a real Argos package
    python benchmarks/bench_translate.py --small                 # the 0.2M-parameter test stand-in

The model is a stand-in of a real Argos / opus-mt en->it model's size: a MarianMT with
d_model 512, 6 encoder and 6 decoder layers, feed-forward 2048, 8 heads and a 32,000-entry
vocabulary (61M parameters; opus-mt-en-it has 76M with its 80k vocabulary). Its weights are
random except the top decoder layer, trained a few dozen steps to end its output the way a
translation does (a few minutes on 2 cores; training all layers would take hours there), so
each sentence costs what a real model's costs; its translations are nonsense. It is built
once and kept under benchmarks/.bench/.

Each measurement runs in a fresh process (argostranslate reads its thread settings once, at
import): `llamantino translate` on a JSON-lines file of UltraChat records holding the
sentences (rate over its own translating time: splitting, tokenising, decoding, joining),
then `argostranslate.translate.translate()` on each sentence after one warm-up call.
A thread layout `IxW` gives both CTranslate2 `intra_threads` I (ARGOS_INTRA_THREADS) and
`inter_threads` W (ARGOS_INTER_THREADS); argostranslate, called once per sentence, cannot use
more than one of the W workers. Beam 4, length penalty 0.2, compute type as given (auto:
int8 on CPU). With a CUDA device, the same comparison runs on the GPU(s) too.

What limits the gain on a 2-core CPU. In int8 the per-string path is already efficient: the
four beams make a 4-row product, and the int8 weights a decoding step reads (about 41 MB)
nearly fit the 32 MB L3 cache, so batching gains about 2.5-3x per core; in float32 (164 MB a
step) the per-string path waits on memory and batching gains 4-5x, but int8 is faster for
both. The second worker (1x2) nearly doubles the batched path's rate on 2 idle cores (quiet
2 cores: 19.0 against 3.6 sentences/s, 5.3x; one core 2.8x); on a machine shared with other
jobs it gets what is left of the second core (3.3x was measured so). Batches of 1,024 to 4,096 tokens ran within noise
of each other; one batch on 2 threads (2x1) was slower than 1x1 for both paths; Intel MKL
(CT2_USE_MKL=1) made int8 ten times slower on this AMD CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEMO_TEXT = ROOT / "src" / "llamantino" / "assets" / "demo" / "en_train.txt"
# Transformer base as in Argos / opus-mt models; only the top decoder layer is trained.
TRANSFORMER_BASE = dict(d_model=512, layers=6, heads=8, ffn_dim=2048, vocab_size=4000, model_vocab=32000,
                        train_layers=1, steps=60, batch_size=8, learning_rate=1e-3, threads=2)
# The paper translated 512,837 UltraChat dialogues. UltraChat dialogues have 3 to 7 rounds
# (its README); we count 5 rounds of a 2-sentence question and a 10-sentence answer.
ULTRACHAT_DIALOGUES = 512_837
SENTENCES_PER_DIALOGUE = 60


def benchmark_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct sentences of 6-24 words cut from the bundled English demo text."""
    import random

    words = re.findall(r"[A-Za-z']+", DEMO_TEXT.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        start, length = rng.randrange(len(words) - 24), rng.randint(6, 24)
        text = " ".join(words[start:start + length])
        out[text[0].upper() + text[1:] + "."] = None
    return list(out)


# ---------------------------------------------------------------------------------------
# One measurement, in a fresh process


def measure_llamantino(spec: dict) -> dict:
    from llamantino.core.runner import config_for
    from llamantino.data import translate

    sentences = benchmark_sentences(spec["sentences"])
    work = Path(spec["work"])
    shutil.rmtree(work, ignore_errors=True)  # a finished run there would be skipped, not measured
    source = work / "input.jsonl"
    work.mkdir(parents=True)
    with open(source, "w", encoding="utf-8") as handle:  # two sentences per record, one per turn
        for i in range(0, len(sentences) - 1, 2):
            handle.write(json.dumps({"id": str(i), "data": sentences[i:i + 2]}) + "\n")
    cfg = config_for("translate", inputs=[str(source)], output=str(work / "out"), model=spec["model"],
                     threads=spec["intra"], workers=spec["inter"], compute_type=spec["compute_type"],
                     device=spec["device"], device_index=spec["device_index"],
                     max_batch_size=spec["max_batch_size"], chunk_records=spec["chunk_records"])
    t0 = time.perf_counter()
    summary = translate.run(cfg)
    wall = time.perf_counter() - t0
    metrics = summary["metrics"]
    translations = [t for line in (work / "out" / "translated.jsonl").read_text(encoding="utf-8").splitlines()
                    for t in json.loads(line)["data"]]
    return {"rate": metrics["sentences"] / metrics["seconds_translating"], "wall_rate": len(translations) / wall,
            "sentences": metrics["sentences"], "at_256": metrics["outputs_at_256_tokens"],
            "max_batch_size": metrics["max_batch_size"], "translations": translations}


def measure_argos(spec: dict) -> dict:
    from llamantino.core.runner import config_for
    from llamantino.data import translate

    sentences = benchmark_sentences(spec["sentences"])[: spec["sentences"] // 2 * 2]
    cfg = config_for("translate", inputs=["unused"], output="unused", model=spec["model"], engine="argos",
                     threads=spec["intra"], workers=spec["inter"], compute_type=spec["compute_type"],
                     device=spec["device"], argos_packages_dir=str(Path(spec["work"]) / "packages"))
    engine = translate.ArgosEngine(translate.inspect_model(cfg), cfg)  # installs the package, offline
    engine.translate_one("Warm-up sentence.", cfg.src, cfg.tgt)
    t0 = time.perf_counter()
    translations = [engine.translate_one(sentence, cfg.src, cfg.tgt) for sentence in sentences]
    return {"rate": len(sentences) / (time.perf_counter() - t0), "translations": translations}


def run_child(spec: dict) -> dict:
    """One measurement in a fresh Python process (argostranslate's settings are fixed at import)."""
    env = {**os.environ, "LLAMANTINO_LOG": "WARNING", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):  # argostranslate writes there
        env[name] = str(Path(spec["work"]) / "xdg" / name.lower())
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"measurement failed ({spec['path']}, {spec['device']}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------------------
# The comparison


def build_model(args, work: Path) -> str:
    from llamantino.core.manifest import read_manifest
    from llamantino.demo.tiny_translator import build_tiny_translator

    if args.model:
        return args.model
    folder, settings = (work / "small-stand-in", {}) if args.small else (work / "transformer-base", TRANSFORMER_BASE)
    t0 = time.perf_counter()
    built = build_tiny_translator(folder, **settings)
    metrics = read_manifest(folder)["metrics"]  # the build's own time, also when found already built
    when = "this run" if time.perf_counter() - t0 > 0.5 * metrics["seconds"] else "by an earlier run; kept"
    print(f"stand-in: {metrics['parameters'] / 1e6:.1f}M parameters, vocabulary {metrics['vocab_size']:,}, "
          f"built in {metrics['seconds']:.0f} s ({when}): {built['argosmodel']}")
    return str(built["argosmodel"])


def compare(args, model: str, work: Path, device: str, layouts, sentences: int, compute_type: str) -> list[dict]:
    import ctranslate2

    gpus = list(range(ctranslate2.get_cuda_device_count())) if device == "cuda" else [0]
    rows = []
    for intra, inter in layouts:
        spec = dict(model=model, sentences=sentences, intra=intra, inter=inter, compute_type=compute_type,
                    device=device, device_index=gpus, max_batch_size=args.max_batch_size,
                    chunk_records=args.chunk_records)
        ours = run_child({**spec, "path": "llamantino", "work": str(work / f"run-{device}-{intra}x{inter}")})
        argos = run_child({**spec, "path": "argos", "work": str(work / "argos")})
        same = sum(a == b for a, b in zip(ours["translations"], argos["translations"]))
        rows.append({"device": device if device == "cpu" else f"cuda x{len(gpus)}", "gpus": len(gpus) * (device == "cuda"),
                     "layout": f"{intra}x{inter}",
                     "compute_type": compute_type, "ours": ours, "argos": argos, "same": same,
                     "count": len(argos["translations"])})
        print_row(rows[-1])
    return rows


def print_row(row: dict) -> None:
    ours, argos = row["ours"], row["argos"]
    print(f"{row['device']:>9}  {row['layout']:>6}  {row['compute_type']:>12}  {ours['max_batch_size']:>6}  "
          f"{ours['rate']:10.1f}  {ours['wall_rate']:10.1f}  {argos['rate']:10.1f}  {ours['rate'] / argos['rate']:6.1f}x  "
          f"{row['same']}/{row['count']}", flush=True)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def ultrachat_hours(rate: float) -> float:
    return ULTRACHAT_DIALOGUES * SENTENCES_PER_DIALOGUE / rate / 3600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=".argosmodel to measure (default: build the Transformer-base stand-in)")
    parser.add_argument("--small", action="store_true", help="the 0.2M-parameter test stand-in instead")
    parser.add_argument("--sentences", type=int, default=480, help="sentences translated by each path on CPU")
    parser.add_argument("--cuda-sentences", type=int, default=4000, help="sentences per path on CUDA")
    parser.add_argument("--layouts", default="1x1,1x2",
                        help="CPU thread layouts INTRAxINTER, comma-separated: one core, then one batch per core "
                             "on 2 cores (2x1, one batch on 2 threads, was slower for both paths here)")
    parser.add_argument("--compute-types", default="auto", help="CPU compute types, comma-separated, both paths "
                                                                "(auto: int8 on CPU)")
    parser.add_argument("--cuda-compute-types", default="int8_float16,float16", help="compute types on CUDA")
    parser.add_argument("--max-batch-size", type=int, default=0, help="llamantino's tokens per batch (0: its default)")
    parser.add_argument("--chunk-records", type=int, default=4096,
                        help="llamantino's records (of 2 sentences here) per chunk; 256 UltraChat records, the "
                             "default chunk, hold about 15,000 sentences")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / ".bench" / "translate"),
                        help="folder for the stand-in (kept between runs) and the measurements")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = (measure_llamantino if spec["path"] == "llamantino" else measure_argos)(spec)
        print(json.dumps(result))
        return 0

    import ctranslate2

    work = Path(args.work)
    print(load())
    model = build_model(args, work)
    layouts = [tuple(int(n) for n in layout.split("x")) for layout in args.layouts.split(",")]
    print(f"\n{args.sentences} sentences ({sum(len(s.split()) for s in benchmark_sentences(args.sentences)) / args.sentences:.1f} "
          "words on average), beam 4; rates in sentences/s")
    print(f"{'device':>9}  {'IxW':>6}  {'compute':>12}  {'batch':>6}  {'llamantino':>10}  {'(wall)':>10}  "
          f"{'argos':>10}  {'ratio':>7}  same output")
    rows = []
    for compute_type in args.compute_types.split(","):
        rows += compare(args, model, work, "cpu", layouts, args.sentences, compute_type)
    if ctranslate2.get_cuda_device_count() > 0:
        for compute_type in args.cuda_compute_types.split(","):
            rows += compare(args, model, work, "cuda", [(1, 1)], args.cuda_sentences, compute_type)
    else:
        print("CUDA rows skipped: no CUDA device found (ctranslate2.get_cuda_device_count() == 0)")
    print(load())
    for device in sorted({row["device"] for row in rows}):
        same = [r for r in rows if r["device"] == device]
        ours, argos = max(r["ours"]["rate"] for r in same), max(r["argos"]["rate"] for r in same)
        gpus = f" x {same[0]['gpus']} GPUs" if same[0]["gpus"] else ""
        print(f"UltraChat as the paper translated it ({ULTRACHAT_DIALOGUES:,} dialogues x ~{SENTENCES_PER_DIALOGUE} "
              f"sentences) at the best {device} rates: llamantino ({ours:.1f}/s) {ultrachat_hours(ours):,.0f} "
              f"hours{gpus}, argostranslate ({argos:.1f}/s) {ultrachat_hours(argos):,.0f} hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
