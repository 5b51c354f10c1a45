"""Resuming a streamed corpus: time to the first document after a checkpoint.

A synthetic corpus (web-like document lengths) is written as JSON lines, gzipped JSON lines,
plain text, parquet and, in 20 shards read through datasets' packaged json builder, as a
`hub:` source. A
stream reads `--at` of it, saves its position, and a fresh stream resumes from it:

* ours: the saved position (byte offset; parquet row; the hub dataset's own state);
* baseline: the older layout, records counted from the start of the source and read again
  to get back there (what resuming did before byte offsets; for `hub:`, `IterableDataset.skip`).

Both must give the same next document; the script prints milliseconds to it, side by side.

    python benchmarks/bench_stream_resume.py                 # 100,000 documents
    python benchmarks/bench_stream_resume.py --documents 1000000 --at 0.9
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import tempfile
import time
from pathlib import Path

WORDS = ("il gatto dorme sul divano mentre la pioggia cade sulla città di Roma e domani andremo al mare "
         "con gli amici di Napoli").split()


def write_corpus(folder: Path, documents: int, seed: int = 0) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(max(5, int(math.exp(rng.gauss(5.0, 0.8))))))
             for _ in range(documents)]
    lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
    (folder / "c.jsonl").write_bytes(lines)
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(lines, compresslevel=6))
    (folder / "c.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": texts}), folder / "c.parquet", row_group_size=10_000)
    # A hub dataset comes in shards (clean_mc4_it: 1,024 files); here 20 of them.
    shards = []
    for i in range(20):
        part = texts[i * documents // 20:(i + 1) * documents // 20]
        shards.append(folder / f"shard-{i:02d}.jsonl")
        shards[-1].write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in part), encoding="utf-8")
    return {"jsonl": str(folder / "c.jsonl"), "jsonl.gz": str(folder / "c.jsonl.gz"), "txt": str(folder / "c.txt"),
            "parquet": str(folder / "c.parquet"), "hub:json": f"hub:json?data_files={','.join(map(str, shards))}"}


def first_document_after(source: str, state: dict) -> tuple[float, str]:
    from llamantino.data.streaming import DocumentStream

    started = time.perf_counter()
    stream = DocumentStream([source])
    stream.load_state_dict(state)
    text = next(iter(stream))
    return time.perf_counter() - started, text


def older_layout(state: dict, records: int) -> dict:
    return {"source_index": 0, "offset": records, "count": state["count"], "epoch": 0,
            "sources": state["sources"], "rank": 0, "world": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--at", type=float, default=0.9, help="share of the corpus read before the checkpoint")
    args = parser.parse_args()
    from llamantino.data.streaming import DocumentStream

    with tempfile.TemporaryDirectory() as tmp:
        sources = write_corpus(Path(tmp), args.documents)
        size = Path(sources["jsonl"]).stat().st_size
        print(f"{args.documents:,} documents, {size / 2**20:.0f} MiB of JSON lines; checkpoint after "
              f"{args.at:.0%} of them")
        print(f"{'source':<10} {'ours (ms)':>10} {'baseline (ms)':>14} {'speed-up':>9}")
        consumed = int(args.documents * args.at)
        for kind, source in sources.items():
            stream = DocumentStream([source])
            documents = iter(stream)
            for _ in range(consumed):
                next(documents)
            state = json.loads(json.dumps(stream.state_dict()))
            expected = next(documents)
            ours, text = first_document_after(source, state)
            assert text == expected, kind
            if kind.startswith("hub:"):
                import datasets

                started = time.perf_counter()
                shards = source.split("=", 1)[1].split(",")
                baseline_text = next(iter(datasets.load_dataset("json", data_files=shards, split="train",
                                                                streaming=True).skip(consumed)))["text"]
                baseline = time.perf_counter() - started
            else:
                baseline, baseline_text = first_document_after(source, older_layout(state, consumed))
            assert baseline_text == expected, kind
            print(f"{kind:<10} {1000 * ours:>10.1f} {1000 * baseline:>14.1f} {baseline / ours:>8.0f}x")


if __name__ == "__main__":
    main()
