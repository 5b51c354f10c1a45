"""The pinned losses and learning rates of the tiny adapt and instruct runs (torch 2.13 on
CPU, float32), and a reader of the metrics a run logs."""

import csv
from pathlib import Path


def logged(run_dir, column):
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


ADAPT_LOSSES = [6.281891822814941, 6.29821252822876, 6.280797004699707, 6.259325981140137, 6.259457111358643,
                6.233011245727539]
ADAPT_LR = [0.0, 0.0005, 0.001, 0.00075, 0.0005, 0.00025]
INSTRUCT_LOSSES = [6.267764193340413, 6.263270937163254, 6.135099991508152, 6.065739135742188]
INSTRUCT_LR = [0.0, 0.001, 0.00075, 0.00025]
