"""The cleaning tests' sample page, the demo shard's records, and shard readers and writers."""

import gzip
import json
from pathlib import Path

from helpers import make_demo_shard


DEMO = make_demo_shard.OUT

# Six plain Italian sentences on three lines: 5+ sentences, 500+ characters once cleaned.
GOOD_LINES = [
    "La biblioteca comunale resterà aperta anche nel mese di agosto, con un orario ridotto al mattino. "
    "I lettori potranno prendere in prestito libri, riviste e film come nel resto dell'anno.",
    "Durante l'estate sono previsti incontri con gli autori nel giardino interno, all'ombra dei tigli. "
    "La partecipazione è gratuita, ma è consigliata la prenotazione presso il banco del prestito.",
    "Per i più piccoli tornano le letture animate del giovedì pomeriggio, curate dai volontari. "
    "Gli operatori ricordano di restituire i volumi entro la data indicata sulla ricevuta.",
]


def page(*extra_lines, lines=GOOD_LINES) -> str:
    return "\n".join(list(lines) + list(extra_lines))


def write_jsonl(path: Path, records, *, gz=True):
    data = "".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def read_shards(folder: Path) -> list[dict]:
    out = []
    for shard in sorted(folder.glob("part-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            out += [json.loads(line) for line in handle]
    return out


def shard_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.jsonl.gz"))}


def demo_records(copies=1):
    records = [json.loads(line) for line in gzip.open(DEMO, "rt", encoding="utf-8")]
    return [dict(r, url=f"{r['url']}?copy={i}" if i else r["url"]) for i in range(copies) for r in records]


def mc4_shard_folder(tmp_path, pages: int):
    """A folder `data` holding one mC4-format shard of `pages` clean Italian pages."""
    folder = tmp_path / "data"
    folder.mkdir()
    records = [{"text": page(f"Pagina numero {i} del corpus di prova, scritta per questo test."),
                "url": f"https://example.it/{i}", "timestamp": "2020-01-01"} for i in range(pages)]
    write_jsonl(folder / "c4-it.tfrecord-00000-of-01024.json.gz", records)
    return folder
