"""The metrics the official EVALITA 2023 scorers compute, written out so they can be read.

Conventions follow scikit-learn (which most official scorers call): an undefined
precision, recall or F1 counts as 0 (`zero_division=0`); `macro_f1` averages over the
label list given, or, like `sklearn.metrics.f1_score(average="macro")` without `labels`,
over the sorted union of gold and predicted labels. `None` predictions (answers that
could not be decoded) are always wrong and are never a class of their own.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def per_class(gold: Sequence[Hashable], pred: Sequence[Hashable], labels: Sequence[Hashable]) -> dict:
    """{label: {"precision", "recall", "f1", "support"}} for single-label classification."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    out = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        p, r, f = prf(tp, fp, fn)
        out[label] = {"precision": p, "recall": r, "f1": f, "support": tp + fn}
    return out


def default_labels(gold, pred) -> list:
    return sorted({g for g in gold if g is not None} | {p for p in pred if p is not None}, key=str)


def macro_f1(gold, pred, labels: Sequence[Hashable] | None = None) -> float:
    labels = list(labels) if labels is not None else default_labels(gold, pred)
    if not labels:
        return 0.0
    table = per_class(gold, pred, labels)
    return sum(v["f1"] for v in table.values()) / len(labels)


def micro_prf(gold, pred, labels: Sequence[Hashable]) -> tuple[float, float, float]:
    """Micro-averaged P/R/F1 restricted to `labels` (like classification_report's micro avg)."""
    labels = set(labels)
    tp = sum(1 for g, p in zip(gold, pred) if g == p and g in labels)
    fp = sum(1 for g, p in zip(gold, pred) if p in labels and g != p)
    fn = sum(1 for g, p in zip(gold, pred) if g in labels and g != p)
    return prf(tp, fp, fn)


def accuracy(gold, pred) -> float:
    if not gold:
        return 0.0
    return sum(1 for g, p in zip(gold, pred) if g == p) / len(gold)


def multilabel_macro_f1(gold: Sequence[Sequence[int]], pred: Sequence[Sequence[int]]) -> float:
    """Mean over columns of the binary F1 of each label column (0/1 indicator rows)."""
    if not gold:
        return 0.0
    n = len(gold[0])
    total = 0.0
    for j in range(n):
        tp = sum(1 for g, p in zip(gold, pred) if g[j] and p[j])
        fp = sum(1 for g, p in zip(gold, pred) if not g[j] and p[j])
        fn = sum(1 for g, p in zip(gold, pred) if g[j] and not p[j])
        total += prf(tp, fp, fn)[2]
    return total / n


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            out[order[k]] = avg
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(ranks(x), ranks(y))


EARTH_RADIUS_KM = 6371.0088  # mean Earth radius, as the haversine package uses


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    for lat, lon in ((lat1, lon1), (lat2, lon2)):
        if not (-90 <= lat <= 90) or not (-180 <= lon <= 180):
            raise ValueError(f"coordinates out of range: ({lat}, {lon})")
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))
