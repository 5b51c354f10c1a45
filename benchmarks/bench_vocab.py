"""Tokens per word on Italian before and after `llamantino vocab extend`, with the demo tokenizer.

    python benchmarks/bench_vocab.py                         # 1k / 4k / 8k tokens, both corpora
    python benchmarks/bench_vocab.py --sizes 1000 2000 --corpus-mb 8
    python benchmarks/bench_vocab.py --base runs/demo/base   # a `llamantino demo-base` output

The base is the demo's tokenizer: byte-level BPE with 4,096 tokens learnt on the bundled
English text, exactly as `llamantino demo-base` builds it (with a small random model under it
unless --base names a real one: tokens per word depend on the tokenizer alone). Its
vocabulary is extended with 1k, 4k and 8k tokens learnt on two Italian corpora, and each
extended tokenizer is measured on the bundled Italian held-out text (`it_heldout.txt`,
never learnt from) and, to see what English loses or gains, on `en_heldout.txt`:

* bundled: the project's Italian text (`it_train.txt`, the mC4 sample, the Dolly and chat
  samples), about 0.2 MB. It supports about 5k new tokens at min_frequency 2; larger sizes
  are reported as what it supports.
* generated: --corpus-mb of Italian (4 MB by default), half the bundled text repeated, half
  generated sentences built from templates around the verbs of the bundled text, conjugated
  by the regular paradigms of -are/-ere/-ire in every person of seven tenses (irregular verbs
  come out regularised; the most irregular are left out). The generated half adds the
  inflected forms Italian text is full of, so the corpus supports 8k tokens; its sentences
  are grammatical but say little. The repeated half keeps the templates' own words from
  being the first tokens learnt.

Words are whitespace-separated; tokens are counted without BOS/EOS. Also printed: bytes per
token, how many of the new tokens the Italian held-out text uses, and seconds per extension
(reading, learning, saving). `--training` adds the training comparison: training tokens/s
and bits per byte after the same number of adaptation steps, on a trained demo base with
and without extension (new rows trained by `adapt --train-embeddings new`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO = Path(__file__).resolve().parents[1] / "src" / "llamantino" / "assets" / "demo"

# ---------------------------------------------------------------------------------------
# Italian text: bundled, and generated from the bundled verbs


def bundled_italian() -> list[str]:
    """The project's Italian text, held-out text excluded: paragraphs, records' text fields,
    instructions and answers, chat turns."""
    from llamantino.data.vocab import read_documents

    texts = list(read_documents([str(DEMO / "it_train.txt")]))
    texts += list(read_documents([str(DEMO / "mc4_it_sample.jsonl.gz")]))
    for record in read_documents([str(DEMO / "dolly_it_sample.jsonl")], text_field=None):
        texts += [record[k] for k in ("instruction", "context", "response") if record.get(k)]
    for record in read_documents([str(DEMO / "it_dialogues.jsonl")], text_field=None):
        texts += [turn["content"] for turn in record["messages"]]
    return texts


PERSONS = ["io", "tu", "lei", "noi", "voi", "loro"]
AUXILIARY = ["ho", "hai", "ha", "abbiamo", "avete", "hanno"]
STARE = ["sto", "stai", "sta", "stiamo", "state", "stanno"]
ENDINGS = {  # presente, imperfetto, passato remoto, futuro, condizionale, congiuntivo imperfetto
    "are": ["o i a iamo ate ano", "avo avi ava avamo avate avano", "ai asti ò ammo aste arono",
            "erò erai erà eremo erete eranno", "erei eresti erebbe eremmo ereste erebbero",
            "assi assi asse assimo aste assero", "ando ato"],
    "ere": ["o i e iamo ete ono", "evo evi eva evamo evate evano", "ei esti é emmo este erono",
            "erò erai erà eremo erete eranno", "erei eresti erebbe eremmo ereste erebbero",
            "essi essi esse essimo este essero", "endo uto"],
    "ire": ["o i e iamo ite ono", "ivo ivi iva ivamo ivate ivano", "ii isti ì immo iste irono",
            "irò irai irà iremo irete iranno", "irei iresti irebbe iremmo ireste irebbero",
            "issi issi isse issimo iste issero", "endo ito"],
}
TENSES = ["presente", "imperfetto", "passato", "futuro", "condizionale", "congiuntivo", "nonfinite"]
IRREGULAR = set("essere avere fare dire andare stare dare potere volere dovere sapere venire tenere bere porre "
                "uscire morire piacere rimanere salire scegliere togliere trarre sedere valere parere".split())
EVIDENCE = {"are": ("ato", "ata", "ati", "ando", "ava", "avano"), "ere": ("uto", "uta", "endo", "eva", "evano"),
            "ire": ("ito", "ita", "endo", "iva", "ivano")}  # forms that show an infinitive is a verb
TEMPLATES = [
    "Ieri {p} {passato}, oggi {p} {presente} e domani {p} {futuro}.",
    "Un tempo {p} {imperfetto} spesso, ma {p} {aux} {participio} soltanto una volta.",
    "Se {p} {congiuntivo} con più calma, {p} {condizionale} meglio.",
    "Adesso {p} {stare} {gerundio}, come {p} {imperfetto} da ragazzi.",
    "Forse {p} {futuro} presto, perché {p} {aux} già {participio}.",
]


def conjugate(verb: str) -> dict[str, list[str]]:
    """Regular forms of an infinitive: six persons per tense, then gerund and participle."""
    stem, kind = verb[:-3], verb[-3:]
    forms = {}
    for tense, endings in zip(TENSES, ENDINGS[kind]):
        forms[tense] = [_join(stem, ending) for ending in endings.split()]
    return forms


def _join(stem: str, ending: str) -> str:
    """Spelling of the regular paradigms: cerc-+i -> cerchi, mangi-+iamo -> mangiamo, mangi-+erò -> mangerò."""
    if stem.endswith(("c", "g")) and ending[0] in "ei" and len(stem) > 1:
        return stem + "h" + ending
    if stem.endswith(("ci", "gi")) and ending[0] in "ei":
        return stem[:-1] + ending
    if stem.endswith("i") and ending[0] == "i":
        return stem + ending[1:]
    return stem + ending


def infinitives(texts: list[str]) -> list[str]:
    """Verbs of the text: words in -are/-ere/-ire whose participle, gerund or imperfect also occurs."""
    words = set(re.findall(r"[a-zàèéìòù]+", " ".join(texts).lower()))
    verbs = []
    for word in sorted(words):
        if len(word) < 5 or word[-3:] not in ENDINGS or word in IRREGULAR or word.endswith("iere"):
            continue
        if any(_join(word[:-3], ending) in words for ending in EVIDENCE[word[-3:]]):
            verbs.append(word)
    return verbs


def generated_sentence(rng: random.Random, verbs: list[str]) -> str:
    verb, person = rng.choice(verbs), rng.randrange(6)
    forms = conjugate(verb)
    gerund, participle = forms["nonfinite"]
    slots = {tense: forms[tense][person] for tense in TENSES[:-1]}
    text = rng.choice(TEMPLATES).format(p=PERSONS[person], aux=AUXILIARY[person], stare=STARE[person],
                                        gerundio=gerund, participio=participle, **slots)
    return text[0].upper() + text[1:]


def generated_corpus(path: Path, megabytes: float, seed: int = 0) -> dict:
    """About `megabytes` of Italian: the bundled text repeated to fill half, generated
    paragraphs of five sentences the other half (alone, the templates' words would make
    the first tokens learnt), shuffled."""
    texts = bundled_italian()
    verbs = infinitives(texts)
    rng = random.Random(seed)
    bundled = sum(len(t.encode("utf-8")) for t in texts)
    repeats = max(1, round(megabytes * 1e6 / 2 / bundled))
    paragraphs = texts * repeats
    size = bundled * repeats
    while size < megabytes * 1e6:
        paragraph = " ".join(generated_sentence(rng, verbs) for _ in range(5))
        paragraphs.append(paragraph)
        size += len(paragraph.encode("utf-8"))
    rng.shuffle(paragraphs)
    path.write_text("\n\n".join(p.replace("\n\n", "\n") for p in paragraphs) + "\n", encoding="utf-8")
    return {"verbs": len(verbs), "repeats": repeats, "bytes": path.stat().st_size}


# ---------------------------------------------------------------------------------------
# The base and the runs


def demo_base(folder: Path) -> Path:
    """The demo tokenizer (as `llamantino demo-base` builds it) over a small random LLaMA."""
    from llamantino.demo.demo_base import Config, build_model, build_tokenizer, read_paragraphs

    cfg = Config(output=str(folder))
    tokenizer = build_tokenizer(read_paragraphs(cfg.train_text), cfg.vocab_size)
    model = build_model(tokenizer, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4,
                        max_position_embeddings=256)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def extend(base: Path, corpus: Path, tokens: int, output: Path, min_frequency: int) -> dict:
    """One extension; its report, or {"supported": K} when the corpus holds fewer tokens."""
    from llamantino.core.errors import LlamantinoError
    from llamantino.core.runner import config_for
    from llamantino.data.vocab import run

    cfg = config_for("vocab_extend", model=str(base), data=[str(corpus)], add_tokens=tokens,
                     min_frequency=min_frequency, output=str(output),
                     eval_data=[f"it={DEMO / 'it_heldout.txt'}", f"en={DEMO / 'en_heldout.txt'}"])
    t0 = time.time()
    try:
        run(cfg, overwrite=True)
    except LlamantinoError as exc:
        found = re.search(r"supports only (\d+)", str(exc))
        if not found:
            raise
        return {"supported": int(found.group(1))}
    report = json.loads((output / "vocab_report.json").read_text(encoding="utf-8"))
    report["wall_seconds"] = time.time() - t0
    return report


def table(rows: list[tuple]) -> str:
    header = ("corpus", "added", "it tok/word", "it bytes/tok", "new used (it)", "en tok/word", "s")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def row(name: str, tokens: int, report: dict) -> tuple:
    if "supported" in report:
        return (name, tokens, f"corpus supports only {report['supported']}", "", "", "", "")
    it, en = report["eval"]["it"], report["eval"]["en"]
    return (name, tokens, f"{it['after']['tokens_per_word']:.3f}", f"{it['after']['bytes_per_token']:.2f}",
            f"{it['new_tokens_used']} ({it['new_token_share']:.0%} of tokens)",
            f"{en['after']['tokens_per_word']:.3f}", f"{report['wall_seconds']:.0f}")


def baseline_row(report: dict) -> tuple:
    it, en = report["eval"]["it"], report["eval"]["en"]
    return ("demo tokenizer", 0, f"{it['before']['tokens_per_word']:.3f}", f"{it['before']['bytes_per_token']:.2f}",
            "", f"{en['before']['tokens_per_word']:.3f}", "")


# ---------------------------------------------------------------------------------------
# Second part: training with and without extension


def training_comparison(work: Path, corpus: Path, tokens: int, steps: int) -> list[tuple]:
    """Training tokens/s and Italian bits per byte after the same number of adaptation steps, on
    a trained demo base and on that base extended with `tokens` Italian tokens (new embedding
    rows trained with `adapt --train-embeddings new`). Bits per byte, unlike loss per token,
    compares models with different tokenizers. Same data, settings and seed for both runs."""
    from llamantino.core.recipes import stage_module
    from llamantino.core.runner import config_for

    def run_stage(kind, cfg):
        return stage_module(kind).run(cfg, overwrite=True)

    base = work / "trained-base"
    run_stage("demo_base", config_for("demo_base", output=str(base)))
    extended = work / f"trained-base-plus-{tokens}"
    report = extend(base, corpus, tokens, extended, 2)
    if "supported" in report:
        raise SystemExit(f"bench_vocab: the corpus supports only {report['supported']} tokens; use fewer")
    data = [str(DEMO / "it_train.txt"), str(DEMO / "mc4_it_sample.jsonl.gz")]
    rows = []
    for name, model, mode in (("demo base", base, "none"), (f"+{tokens} tokens", extended, "new")):
        run = work / f"adapt-{mode}"
        t0 = time.time()
        result = run_stage("adapt", config_for(
            "adapt", model=str(model), data=data, output=str(run), max_length=256, batch_size=8, max_steps=steps,
            learning_rate=2e-3, compute_dtype="float32", gradient_checkpointing=False, save_steps=0,
            train_embeddings=mode, eval_data=[f"it={DEMO / 'it_heldout.txt'}", f"en={DEMO / 'en_heldout.txt'}"]))
        m = result["metrics"]
        rows.append((name, mode, f"{m['tokens_per_s']:,.0f}", f"{m['tokens_seen'] / steps:,.0f}",
                     f"{m['eval_it_bpb']:.4f}", f"{m['eval_en_bpb']:.4f}", f"{time.time() - t0:.0f}"))
    return rows


def training_table(rows: list[tuple]) -> str:
    header = ("model", "embeddings", "train tok/s", "tokens/step", "it bpb", "en bpb", "s")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 8000], help="tokens to add")
    parser.add_argument("--corpus-mb", type=float, default=4.0, help="size of the generated corpus")
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--base", type=Path, help="model folder with the demo tokenizer (default: built here)")
    parser.add_argument("--training", action="store_true", help="also run the training comparison")
    parser.add_argument("--training-tokens", type=int, default=1000, help="tokens added for the training comparison")
    parser.add_argument("--training-steps", type=int, default=60, help="adaptation steps of each run (the demo's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-vocab-") as tmp:
        work = Path(tmp)
        base = args.base or demo_base(work / "base")
        bundled = work / "bundled.txt"
        bundled.write_text("\n\n".join(t.replace("\n\n", "\n") for t in bundled_italian()) + "\n", encoding="utf-8")
        generated = work / "generated.txt"
        info = generated_corpus(generated, args.corpus_mb)
        print(f"base: {base}; bundled Italian {bundled.stat().st_size / 1e6:.2f} MB; generated Italian "
              f"{info['bytes'] / 1e6:.2f} MB (bundled x{info['repeats']}, {info['verbs']} verbs conjugated); min_frequency {args.min_frequency}")
        rows, first = [], None
        for name, corpus in (("bundled", bundled), ("generated", generated)):
            for tokens in args.sizes:
                report = extend(base, corpus, tokens, work / f"{name}-{tokens}", args.min_frequency)
                if first is None and "eval" in report:
                    first = report
                rows.append(row(name, tokens, report))
                print(f"  {name} +{tokens}: done", file=sys.stderr, flush=True)
        if first is not None:
            rows.insert(0, baseline_row(first))
        print("\nTokens per word on held-out text (bundled it_heldout.txt / en_heldout.txt), lower is better")
        print(table(rows))
        if args.training:
            rows = training_comparison(work, bundled, args.training_tokens, args.training_steps)
            print(f"\nAdaptation after {args.training_steps} steps (batch 8 x 256, float32), the base trained on "
                  "English as the demo's; bits per byte on held-out text, lower is better")
            print(training_table(rows))
            print("RESULT " + json.dumps({"benchmark": "vocab", "figure": "Italian bits per byte after adaptation",
                                          "ours": float(rows[1][4]), "baseline": float(rows[0][4]),
                                          "baseline_name": "same steps, base vocabulary"}))
        if first is not None:
            it = first["eval"]["it"]
            print("RESULT " + json.dumps({"benchmark": "vocab", "figure": f"Italian tokens/word (+{args.sizes[0]})",
                                          "ours": it["after"]["tokens_per_word"],
                                          "baseline": it["before"]["tokens_per_word"],
                                          "baseline_name": "demo tokenizer"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
