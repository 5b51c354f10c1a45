"""Sentences per second: the batched CTranslate2 path of `llamantino translate` against
`argostranslate.translate.translate()` called once per sentence (the way the paper's
Argos Translate run works), on the same model, the same sentences and the same settings.

    python benchmarks/bench_translate.py                      # the stand-in model, 1,200 sentences
    python benchmarks/bench_translate.py --model translate-en_it.argosmodel --threads 4

Both paths: one run each after one warm-up sentence; CTranslate2 intra-op threads =
inter-op threads as given (ARGOS_INTRA_THREADS / ARGOS_INTER_THREADS), beam 4, length
penalty 0.2, compute type auto, each sentence split by the package's MiniSBD splitter
and tokenised by its SentencePiece model. With the stand-in the translations are
nonsense; the work per sentence is real.

What to expect: batching pays off in proportion to the model's size. The stand-in has
0.2M parameters; CTranslate2 decodes one of its sentences almost as cheaply as a batch,
and both paths pay the same splitting and tokenising per sentence, so the batched path
gains about 1.5-2x there. `--scaling` measures CTranslate2 alone on random models of
growing size (batches of 32 against one sentence at a time), where the gain grows to
several times; translation models in real use have tens of millions of parameters.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEMO_TEXT = Path(__file__).resolve().parents[1] / "src" / "llamantino" / "data" / "demo" / "en_train.txt"


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


def scaling(spm_file: Path, work: Path, sentences: list[str], threads: int) -> None:
    """CTranslate2 alone: one translate_batch of 32 sentences against 32 calls of one, on random
    MarianMT models of growing size, every output forced to 24 tokens (random models never stop)."""
    import json

    import ctranslate2
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    tokens = [sp.encode(s, out_type=str) for s in sentences[:64]]
    print(f"\nscaling: CTranslate2 only, {len(tokens)} sentences, beam 4, 24 output tokens each, threads={threads}")
    for d_model, layers, vocab_size in ((64, 1, 1000), (256, 2, 8000), (512, 3, 16000)):
        hf, ct2 = work / f"random-{d_model}" / "hf", work / f"random-{d_model}" / "ct2"
        if not (ct2 / "model.bin").is_file():
            pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
            pieces += [f"▁filler{i}" for i in range(vocab_size - len(pieces))] + ["<pad>"]
            hf.mkdir(parents=True, exist_ok=True)
            (hf / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
            MarianTokenizer(str(spm_file), str(spm_file), str(hf / "vocab.json")).save_pretrained(hf)
            torch.manual_seed(0)
            MarianMTModel(MarianConfig(
                vocab_size=len(pieces), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * d_model,
                decoder_ffn_dim=4 * d_model, max_position_embeddings=512, pad_token_id=len(pieces) - 1,
                decoder_start_token_id=len(pieces) - 1, eos_token_id=0)).save_pretrained(hf)
            ctranslate2.converters.TransformersConverter(str(hf)).convert(str(ct2), force=True)
        translator = ctranslate2.Translator(str(ct2), intra_threads=threads)
        rates = {}
        for batch in (1, 32):
            t0 = time.perf_counter()
            translator.translate_batch(tokens, max_batch_size=batch, batch_type="examples", beam_size=4,
                                       max_decoding_length=24, min_decoding_length=24)
            rates[batch] = len(tokens) / (time.perf_counter() - t0)
        params = sum(p.numel() for p in MarianMTModel.from_pretrained(hf).parameters()) / 1e6
        print(f"  {params:5.1f}M parameters: one at a time {rates[1]:7.1f}/s, batches of 32 {rates[32]:7.1f}/s, "
              f"ratio {rates[32] / rates[1]:.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=".argosmodel to measure (default: build the stand-in)")
    parser.add_argument("--sentences", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 intra-op threads, both paths")
    parser.add_argument("--workers", type=int, default=1, help="CTranslate2 inter-op threads, both paths")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch (batched path)")
    parser.add_argument("--chunk", type=int, default=256, help="sentences handed over per call (batched path)")
    parser.add_argument("--work", help="folder for the stand-in and the Argos packages (default: temporary)")
    parser.add_argument("--scaling", action="store_true",
                        help="also measure how batching pays off on larger random models (a few minutes)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-translate-") as tmp:
        return measure(args, Path(args.work) if args.work else Path(tmp))


def measure(args, work: Path) -> int:
    # argostranslate reads these once, at import, and creates folders under them.
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        os.environ[name] = str(work / "xdg" / name.lower())

    from llamantino import translate
    from llamantino.runner import config_for

    model = args.model
    if model is None:
        from llamantino.tiny_translator import build_tiny_translator

        t0 = time.perf_counter()
        model = str(build_tiny_translator(work / "stand-in")["argosmodel"])
        print(f"stand-in model built (or found) in {time.perf_counter() - t0:.1f} s: {model}")
    cfg = config_for("translate", inputs=["unused"], output=str(work / "unused"), model=model,
                     engine="argos", threads=args.threads, workers=args.workers, batch_size=args.batch_size,
                     argos_packages_dir=str(work / "argos-packages"))
    info = translate.inspect_model(cfg)
    argos = translate.ArgosEngine(info, cfg)  # installs the .argosmodel offline
    from argostranslate import package

    (installed,) = [p for p in package.get_installed_packages() if (p.from_code, p.to_code) == (cfg.src, cfg.tgt)]
    batched = translate.BatchedEngine(installed.package_path, "argos", cfg)

    sentences = benchmark_sentences(args.sentences)
    print(f"{len(sentences)} distinct sentences ({sum(len(s.split()) for s in sentences) / len(sentences):.1f} "
          f"words on average); threads={args.threads} workers={args.workers} beam={cfg.beam_size} "
          f"compute_type={cfg.compute_type}; {os.cpu_count()} CPU cores")

    batched.translate(["Warm-up sentence."])
    t0 = time.perf_counter()
    for start in range(0, len(sentences), args.chunk):
        batched.translate(sentences[start:start + args.chunk])
    batched_rate = len(sentences) / (time.perf_counter() - t0)

    argos.translate(["Warm-up sentence."])
    t0 = time.perf_counter()
    for sentence in sentences:
        argos.translate_one(sentence, cfg.src, cfg.tgt)
    argos_rate = len(sentences) / (time.perf_counter() - t0)

    print(f"batched CTranslate2 (translate_batch, batch {args.batch_size}, {args.chunk} per call): "
          f"{batched_rate:8.1f} sentences/s")
    print(f"argostranslate.translate.translate() per sentence:                  {argos_rate:8.1f} sentences/s")
    print(f"ratio: {batched_rate / argos_rate:.1f}x")
    if args.scaling:
        from llamantino.tiny_translator import build_tiny_translator

        stand_in = build_tiny_translator(work / "stand-in")  # for its SentencePiece model
        scaling(stand_in["ct2"] / "sentencepiece.model", work, sentences, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
