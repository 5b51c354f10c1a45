"""PoliticIT (Political Ideology Detection in Italian texts): gender and ideology of a
politician from a cluster of their tweets.

Released files are comma-separated CSV with a header, one row per tweet:
`label,gender,ideology_binary,ideology_multiclass,tweet`, where label is the cluster id
(32 hex digits), gender is male|female, ideology_binary left|right and
ideology_multiclass left|moderate_left|moderate_right|right. A file without the three
trait columns (blind test) gives unlabelled items.

Items are chunks of a cluster's tweets (file order, one tweet per line, at most
CHUNK_CHARS characters, about 200 tokens) with ids `<cluster>#<n>`. Target: Italian words
as the instruction names them, gender, binary ideology and 4-way ideology, e.g.
`donna sinistra centrosinistra` (moderate_left -> centrosinistra, moderate_right ->
centrodestra). `decode` takes uomo/donna and the last ideology word as the 4-way
ideology, and derives the binary ideology from it; a trait it cannot find is None.

A cluster's prediction is the majority vote of its chunks, trait by trait (ties go to the
value seen first); `read_gold`, `read_predictions` and `score` work per cluster, and
`score` also accepts chunk-level mappings, which it votes into clusters the same way.

Submission: CSV `label,gender,ideology_binary,ideology_multiclass`, one row per cluster,
English values. Metric: macro-F1 of each trait (sklearn, over the values present in gold
or predictions) and their mean (the mean is not verified at the source).

Official scorer: not found (the Codalab competition 8507's scoring program is not
published). A participant's script (fidan-c/PoliticIT23-ideology-detection,
compute_scores.py) computes sklearn macro-F1 per trait over the values present, as here,
but pairs rows by line; here rows are matched by cluster id, and missing, extra or
repeated clusters are refused. An empty trait cell is an answer that could not be
decoded: scored wrong, and never a value of its own in the macro average; a value
outside the trait's values is refused.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, Task, check_alignment, check_unique, normalize, parse_label,
                                              read_table, require_columns, require_gold)

CHUNK_CHARS = 800
TRAITS = ("gender", "ideology_binary", "ideology_multiclass")
GENDERS = ("male", "female")
BINARY = ("left", "right")
MULTICLASS = ("left", "moderate_left", "moderate_right", "right")
BINARY_OF = {"left": "left", "moderate_left": "left", "moderate_right": "right", "right": "right"}

GENDER_IT = {"male": "uomo", "female": "donna"}
BINARY_IT = {"left": "sinistra", "right": "destra"}
MULTICLASS_IT = {"left": "sinistra", "moderate_left": "centrosinistra",
                 "moderate_right": "centrodestra", "right": "destra"}
GENDER_WORDS = {v: k for k, v in GENDER_IT.items()}
IDEOLOGY_WORDS = {v: k for k, v in MULTICLASS_IT.items()}


def chunks(tweets: list[str], limit: int = CHUNK_CHARS) -> list[str]:
    """Tweets packed in order into texts of at most `limit` characters (a longer tweet alone)."""
    out, current = [], []
    for tweet in tweets:
        if current and len("\n".join(current + [tweet])) > limit:
            out.append("\n".join(current))
            current = []
        current.append(tweet)
    if current:
        out.append("\n".join(current))
    return out


def vote(labels) -> tuple | None:
    """Trait-by-trait majority of (gender, binary, multiclass) tuples; None entries abstain."""
    votes = []
    for i in range(len(TRAITS)):
        counts = Counter(label[i] for label in labels if label is not None and label[i] is not None)
        votes.append(counts.most_common(1)[0][0] if counts else None)  # ties: first seen
    return None if all(v is None for v in votes) else tuple(votes)


def by_cluster(mapping: dict) -> dict:
    """{cluster#n: label} -> {cluster: voted label}; cluster-level keys pass through."""
    groups: dict[str, list] = {}
    for key, label in mapping.items():
        groups.setdefault(str(key).split("#", 1)[0], []).append(label)
    return {cluster: vote(labels) for cluster, labels in groups.items()}


class PoliticIT(Task):
    name = "politicit"
    official = "PoliticIT (gender, binary and multiclass ideology)"
    primary_metric = "macro_f1"

    def _clusters(self, paths):
        """{cluster: (gold, [tweets])} in order of first appearance."""
        clusters, valid = {}, {"gender": GENDERS, "ideology_binary": BINARY, "ideology_multiclass": MULTICLASS}
        for path in map(Path, paths):
            header, rows = read_table(path)
            cols = require_columns(header, ["label", "tweet"], path)
            present = [t for t in TRAITS if t in header]
            if present and len(present) < len(TRAITS):
                missing = next(t for t in TRAITS if t not in header)
                raise LlamantinoError(f"{path}: missing column '{missing}' (columns: {', '.join(header)})")
            for line, fields in rows:
                cluster = fields[cols["label"]].strip()
                if not cluster or "#" in cluster:
                    raise LlamantinoError(f"{path}:{line}: column 'label' has {cluster!r}; expected a cluster id")
                gold = None
                if present:
                    gold = tuple(parse_label(fields[header.index(t)], {v: v for v in valid[t]}, path, line, t)
                                 for t in TRAITS)
                    if BINARY_OF[gold[2]] != gold[1]:
                        raise LlamantinoError(f"{path}:{line}: ideology_binary '{gold[1]}' does not match "
                                              f"ideology_multiclass '{gold[2]}'")
                if cluster in clusters:
                    if clusters[cluster][0] != gold:
                        raise LlamantinoError(f"{path}:{line}: cluster '{cluster}' has labels {gold} here but "
                                              f"{clusters[cluster][0]} on an earlier row")
                else:
                    clusters[cluster] = (gold, [])
                # One tweet per line inside a chunk.
                clusters[cluster][1].append(" ".join(fields[cols["tweet"]].split()))
        return clusters

    def read(self, paths) -> list[Item]:
        items = []
        instruction = evalita_instruction(self.name)
        for cluster, (gold, tweets) in self._clusters(paths).items():
            for n, text in enumerate(chunks(tweets), start=1):
                items.append(Item(id=f"{cluster}#{n}", task=self.name, instruction=instruction, input=text,
                                  output="" if gold is None else self.target(gold), gold=gold,
                                  meta={"cluster": cluster}))
        return items

    def read_gold(self, paths) -> dict:
        return {cluster: gold for cluster, (gold, _) in self._clusters(paths).items()}

    def target(self, label, item=None) -> str:
        gender, binary, multiclass = label
        if gender not in GENDER_IT or multiclass not in MULTICLASS_IT or BINARY_OF[multiclass] != binary:
            raise LlamantinoError(f"{self.name}: {label!r} is not a (gender, binary, multiclass) label")
        return f"{GENDER_IT[gender]} {BINARY_IT[binary]} {MULTICLASS_IT[multiclass]}"

    def decode(self, answer, item=None):
        text = normalize(answer)
        text = re.sub(r"\bcentro (sinistra|destra)\b", r"centro\1", text)  # "centro-sinistra"
        words = text.split()
        gender = next((GENDER_WORDS[w] for w in words if w in GENDER_WORDS), None)
        ideologies = [IDEOLOGY_WORDS[w] for w in words if w in IDEOLOGY_WORDS]
        multiclass = ideologies[-1] if ideologies else None
        if gender is None and multiclass is None:
            return None
        return gender, BINARY_OF.get(multiclass), multiclass

    def read_predictions(self, path) -> dict:
        path = Path(path)
        header, rows = read_table(path)
        cols = require_columns(header, ["label", *TRAITS], path)
        valid = {"gender": GENDERS, "ideology_binary": BINARY, "ideology_multiclass": MULTICLASS}
        pred, seen = {}, set()
        for line, fields in rows:
            cluster = fields[cols["label"]].strip()
            check_unique(seen, cluster, path, line)
            # An empty cell is a trait that could not be decoded: scored wrong.
            label = tuple(None if fields[cols[t]].strip() == "" else
                          parse_label(fields[cols[t]], {v: v for v in valid[t]}, path, line, t) for t in TRAITS)
            pred[cluster] = None if all(v is None for v in label) else label
        return pred

    def write_predictions(self, items, predictions, path) -> None:
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        clusters: dict[str, list] = {}
        for item, label in zip(items, predictions):
            clusters.setdefault(item.meta["cluster"], []).append(label)
        with atomic_open(path) as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["label", *TRAITS])
            for cluster, labels in clusters.items():
                label = vote(labels) or (None, None, None)
                writer.writerow([cluster, *("" if v is None else v for v in label)])

    def score(self, gold: dict, pred: dict) -> dict:
        gold, pred = by_cluster(gold), by_cluster(pred)
        check_alignment(gold, pred, self.name)
        require_gold(gold, self.name)
        keys = list(gold)
        out = {}
        for i, trait in enumerate(TRAITS):
            g = [gold[k][i] for k in keys]
            p = [pred[k][i] if pred[k] is not None else None for k in keys]
            out[f"{trait}_macro_f1"] = metrics.macro_f1(g, p)
        out["macro_f1"] = sum(out[f"{t}_macro_f1"] for t in TRAITS) / len(TRAITS)
        return out


TASKS = {"politicit": PoliticIT()}
