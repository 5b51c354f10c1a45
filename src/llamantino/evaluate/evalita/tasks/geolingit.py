"""GeoLingIt: where in Italy a (dialectal) tweet was written; subtask A region, B coordinates.

Released files are tab-separated with a header, read with quoting disabled (tweets hold
quote marks): A `id text region`, B `id text latitude longitude`, test `id text`. The
same tweet appears in the A and B files under the same id, so the reader joins the files
it is given into one item per tweet with a `GeoLabel(region, latitude, longitude)` gold;
the parts a file set lacks stay None.

Submissions are the gold layout with the labels filled in, one file per subtask, named
`TEAM.<track>.a.<run>` or `TEAM.<track>.b.<run>`.

Metrics, as the official eval.py (dhfbk/geolingit-evalita2023) computes them:
* A: macro-F1 of sklearn's classification_report restricted to the fixed region list of
  the split: the 13 regions of the dev set, or the 17 of the test set (`DEV_REGIONS`,
  `TEST_REGIONS`). Every region of the list counts, present in the gold or not: a region
  nobody predicted and nobody has scores F1 0, so a perfect run on a gold holding 10 of
  the 13 dev regions scores 10/13. A predicted string outside the list (misspelt, empty)
  only costs the gold region's recall.
* B: mean haversine distance in km (mean Earth radius 6371.0088 km, as haversine 2.8.0),
  lower is better.
eval.py is told the split (`-D dev|test`); here it is the split of the gold files read:
dev when every gold region is one of the 13 dev regions, test otherwise (the test set
holds the four regions added for it). It is decided on the whole gold file set when it is
read (`GeoGold.split`), so scoring the first N items does not change the list, and the
metrics report it (`a_regions`: 13 or 17). `score(..., split=...)` sets it by hand.

Differences from eval.py, on purpose:
* eval.py pairs prediction and gold rows by line and ignores ids (it zips the two files,
  silently dropping the longer file's extra rows). Here rows are matched by id, every gold
  id must have exactly one prediction and no other id may occur (missing, extra or
  repeated ids are named), and a file whose rows are not in the gold's order is refused,
  because eval.py would score it against the wrong tweets.
* eval.py compares the raw region cell (only the newline removed), so `Lazio ` or a file
  with CRLF line ends counts wrong there; here surrounding whitespace is removed.
* An empty region cell is a wrong answer in both. An empty coordinate cell makes eval.py
  stop (float('')); here it is an unreadable answer, scored as the centre of Italy and
  counted in `b_unparsed`. A non-number, or a coordinate out of range, is refused (eval.py
  stops on both).

Answer: `[regione] Lazio [geo] 41.89 12.54`, the bracketed markers keeping the parts
apart as in the 2023 systems; decoding also takes plain text ("Lazio, 41,89 12,54").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, Task, check_alignment, check_unique, normalize, parse_label,
                                              read_table, require_columns)

# The region strings of the released files; the last three never occur in them, so their
# spelling is ours.
REGIONS = ("Abruzzo", "Calabria", "Campania", "Emilia Romagna", "Friuli-Venezia Giulia", "Lazio", "Liguria",
           "Lombardia", "Marche", "Piemonte", "Puglia", "Sardegna", "Sicilia", "Toscana", "Trentino-Alto Adige",
           "Umbria", "Veneto", "Basilicata", "Molise", "Valle d'Aosta")
# The official region lists of eval.py: the dev set's 13 regions, and the test set's 17.
DEV_REGIONS = ("Calabria", "Campania", "Emilia Romagna", "Friuli-Venezia Giulia", "Lazio", "Liguria", "Lombardia",
               "Piemonte", "Puglia", "Sardegna", "Sicilia", "Toscana", "Veneto")
TEST_REGIONS = ("Abruzzo", "Calabria", "Campania", "Emilia Romagna", "Friuli-Venezia Giulia", "Lazio", "Liguria",
                "Lombardia", "Marche", "Piemonte", "Puglia", "Sardegna", "Sicilia", "Toscana", "Trentino-Alto Adige",
                "Umbria", "Veneto")
OFFICIAL_REGIONS = {"dev": DEV_REGIONS, "test": TEST_REGIONS}
# Other names an answer may use (normalized text).
ALIASES = {
    "Emilia Romagna": ("emilia", "romagna"),
    "Friuli-Venezia Giulia": ("friuli",),
    "Trentino-Alto Adige": ("trentino", "alto adige", "sudtirol"),
    "Valle d'Aosta": ("val d aosta", "valle d aosta"),
}
# An unreadable position is taken as the geographic centre of Italy (Narni) and counted in
# "b_unparsed": a mean distance needs a point for every tweet.
CENTRE = (42.5176, 12.5156)
NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
GEO = re.compile(r"\[\s*geo\s*\]|\bgeo\b|\blat", re.I)


class GeoLabel(NamedTuple):
    region: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class GeoGold(GeoLabel):
    """A gold label that also knows the split of the gold files it was read from ("dev" or
    "test"), which fixes the official region list; equality ignores it."""

    split = None


def split_of(regions) -> str:
    """The split whose official list eval.py would score these gold regions with."""
    return "dev" if set(regions) <= set(DEV_REGIONS) else "test"


def _region_pattern(name: str) -> str:
    words = normalize(name).split()
    return r"\b" + r" ?".join(map(re.escape, words)) + r"\b"


REGION_MATCHERS = [(re.compile(_region_pattern(alias)), region)
                   for region in REGIONS for alias in (region, *ALIASES.get(region, ()))]


def find_region(text: str) -> str | None:
    """The region named first in `text` (case, accents, hyphens and spacing ignored)."""
    text = normalize(text)
    found = [(m.start(), -len(m.group(0)), region) for matcher, region in REGION_MATCHERS
             if (m := matcher.search(text))]
    return min(found)[2] if found else None


def _number(raw: str) -> float:
    return float(raw.replace(",", "."))


def _coordinate(value: str, column: str, low: float, high: float, path, line) -> float:
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise LlamantinoError(f"{path}:{line}: column '{column}' has {value!r}; "
                              f"valid: a number from {low:g} to {high:g}")
    return number


class GeoLingIt(Task):
    name = "geolingit"
    official = "GeoLingIt subtasks A (region) and B (coordinates)"
    labels = REGIONS
    primary_metric = "a_macro_f1"
    lower_is_better = ("b_mean_km",)

    def read(self, paths) -> list[Item]:
        parts: dict[str, dict] = {}   # id -> {"text", "region", "latitude", "longitude"}
        order: list[str] = []
        for path in map(Path, paths):
            header, rows = read_table(path, delimiter="\t", quoting=False)
            cols = require_columns(header, ["id", "text"], path)
            has_region = "region" in header
            has_coords = "latitude" in header or "longitude" in header
            if has_coords:
                cols.update(require_columns(header, ["latitude", "longitude"], path))
            seen: set = set()
            for line, fields in rows:
                item_id = fields[cols["id"]].strip()
                check_unique(seen, item_id, path, line)
                text = fields[cols["text"]]
                entry = parts.get(item_id)
                if entry is None:
                    entry = parts[item_id] = {"text": text}
                    order.append(item_id)
                elif entry["text"] != text:
                    raise LlamantinoError(f"{path}:{line}: id '{item_id}' has another text than in the "
                                          "file read before it")
                if has_region:
                    if "region" in entry:
                        raise LlamantinoError(f"{path}:{line}: id '{item_id}' has a region in two files")
                    entry["region"] = parse_label(fields[header.index("region")], {r: r for r in REGIONS},
                                                  path, line, "region")
                if has_coords:
                    if "latitude" in entry:
                        raise LlamantinoError(f"{path}:{line}: id '{item_id}' has coordinates in two files")
                    entry["latitude"] = _coordinate(fields[cols["latitude"]], "latitude", -90, 90, path, line)
                    entry["longitude"] = _coordinate(fields[cols["longitude"]], "longitude", -180, 180, path, line)
        split = split_of(parts[k]["region"] for k in order if "region" in parts[k])
        items = []
        for item_id in order:
            entry = parts[item_id]
            gold = GeoGold(entry.get("region"), entry.get("latitude"), entry.get("longitude"))
            gold.split = split
            if gold == GeoLabel():
                gold = None
            items.append(Item(id=item_id, task=self.name, instruction=evalita_instruction(self.name),
                              input=entry["text"], output="" if gold is None else self.target(gold), gold=gold))
        return items

    def target(self, label, item=None) -> str:
        out = []
        if label.region is not None:
            out.append(f"[regione] {label.region}")
        if label.latitude is not None:
            out.append(f"[geo] {label.latitude!r} {label.longitude!r}")
        return " ".join(out)

    def decode(self, answer, item=None):
        answer = str(answer)
        marker = GEO.search(answer)
        region = find_region(answer[:marker.start()] if marker else answer)
        if region is None and marker:
            region = find_region(answer[marker.end():])
        numbers = [_number(n) for n in NUMBER.findall(answer[marker.start():] if marker else answer)]
        lat = lon = None
        if len(numbers) >= 2 and -90 <= numbers[0] <= 90 and -180 <= numbers[1] <= 180:
            lat, lon = numbers[0], numbers[1]
        label = GeoLabel(region, lat, lon)
        return None if label == GeoLabel() else label

    # --- official files ------------------------------------------------------------
    def read_predictions(self, path) -> dict:
        path = Path(path)
        header, rows = read_table(path, delimiter="\t", quoting=False)
        cols = require_columns(header, ["id"], path)
        if "region" in header:
            subtask = "a"
        elif "latitude" in header or "longitude" in header:
            subtask = "b"
            cols.update(require_columns(header, ["latitude", "longitude"], path))
        else:
            raise LlamantinoError(f"{path}: missing column 'region' (subtask A) or 'latitude' and 'longitude' "
                                  f"(subtask B) (columns: {', '.join(header)})")
        pred, seen = {}, set()
        for line, fields in rows:
            item_id = fields[cols["id"]].strip()
            check_unique(seen, item_id, path, line)
            if subtask == "a":
                # Taken verbatim, as the official scorer compares strings: one outside the
                # region list (or spelt otherwise) only costs recall.
                raw = fields[header.index("region")].strip()
                pred[item_id] = GeoLabel(region=raw or None)
            else:
                lat, lon = fields[cols["latitude"]].strip(), fields[cols["longitude"]].strip()
                if lat == "" and lon == "":
                    pred[item_id] = GeoLabel()
                    continue
                pred[item_id] = GeoLabel(None, _coordinate(lat, "latitude", -90, 90, path, line),
                                         _coordinate(lon, "longitude", -180, 180, path, line))
        return pred

    def write_predictions(self, items, predictions, path) -> None:
        """One subtask's file; the official name `TEAM.<track>.<a|b>.<run>` says which."""
        path = Path(path)
        parts = path.name.split(".")
        if len(parts) < 4 or parts[-2] not in ("a", "b"):
            raise LlamantinoError(f"{path}: name the submission TEAM.<track>.a.<run> or TEAM.<track>.b.<run> "
                                  "(e.g. team.standard.a.1); the name says which subtask it holds")
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        subtask = parts[-2]
        lines = ["id\ttext\tregion" if subtask == "a" else "id\ttext\tlatitude\tlongitude"]
        for item, label in zip(items, predictions):
            label = label or GeoLabel()
            if subtask == "a":
                lines.append(f"{item.id}\t{item.input}\t{label.region or ''}")
            elif label.latitude is None:
                lines.append(f"{item.id}\t{item.input}\t\t")
            else:
                lines.append(f"{item.id}\t{item.input}\t{label.latitude!r}\t{label.longitude!r}")
        with atomic_open(path) as handle:
            handle.write("\n".join(lines) + "\n")

    def score(self, gold: dict, pred: dict, *, split: str | None = None) -> dict:
        """A and/or B metrics; `split` ("dev"/"test") picks the region list, else the gold's."""
        check_alignment(gold, pred, self.name)
        if list(pred) != list(gold):
            raise LlamantinoError(f"{self.name}: prediction rows are not in the gold's order; the official "
                                  "scorer pairs rows by position, so write them in the gold's order")
        ids = list(gold)
        gold_rows = [gold[k] or GeoLabel() for k in ids]
        pred_rows = [pred[k] or GeoLabel() for k in ids]
        # A subtask is scored where the gold has its labels, unless the predictions hold only
        # the other subtask's (a submission file is one subtask).
        pred_regions = any(p.region is not None for p in pred_rows)
        pred_coords = any(p.latitude is not None for p in pred_rows)
        out = {}
        with_region = [i for i, g in enumerate(gold_rows) if g.region is not None]
        if with_region and (pred_regions or not pred_coords):
            g = [gold_rows[i].region for i in with_region]
            p = [pred_rows[i].region for i in with_region]
            regions = OFFICIAL_REGIONS[self._split(gold_rows, g, split)]
            out["a_macro_f1"] = metrics.macro_f1(g, p, regions)
            out["a_accuracy"] = metrics.accuracy(g, p)
            out["a_regions"] = len(regions)
        with_coords = [i for i, g in enumerate(gold_rows) if g.latitude is not None]
        if with_coords and (pred_coords or not pred_regions):
            distances, unparsed = [], 0
            for i in with_coords:
                g, p = gold_rows[i], pred_rows[i]
                point = (p.latitude, p.longitude) if p.latitude is not None else CENTRE
                unparsed += p.latitude is None
                distances.append(metrics.haversine_km(g.latitude, g.longitude, *point))
            out["b_mean_km"] = sum(distances) / len(distances)
            out["b_unparsed"] = unparsed
        if not out:
            raise LlamantinoError(f"{self.name}: nothing to score: the predictions hold regions or coordinates "
                                  "the gold lacks")
        return out

    def _split(self, gold_rows, gold_regions, split) -> str:
        """The given split, else the one the gold was read with, else the gold regions' own."""
        if split is None:
            known = {g.split for g in gold_rows if getattr(g, "split", None)}
            if len(known) > 1:
                raise LlamantinoError(f"{self.name}: the gold mixes dev and test files; score them apart")
            split = known.pop() if known else split_of(gold_regions)
        if split not in OFFICIAL_REGIONS:
            raise LlamantinoError(f"{self.name}: unknown split {split!r}; valid: dev, test")
        return split


TASKS = {"geolingit": GeoLingIt()}
