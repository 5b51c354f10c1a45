"""Small bundled samples of the EVALITA 2023 tasks, for the tests and the demo.

The samples are synthetic (written for this package, not taken from the tasks' data) but
follow each task's released format and file names, under `assets/evalita/<family>/`: the
training file(s) next to a `gold/` folder holding a test file with its labels filled in,
in the layout the task's gold is read from.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.core.errors import LlamantinoError

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "assets" / "evalita"
SPLITS = ("train", "test")

# task -> split -> files relative to SAMPLE_DIR
SAMPLES = {
    "acti-a": {"train": ["acti/subtaskA_train.csv"], "test": ["acti/gold/subtaskA_test.csv"]},
    "acti-b": {"train": ["acti/subtaskB_train.csv"], "test": ["acti/gold/subtaskB_test.csv"]},
    "clinkart": {"train": ["clinkart/training.txt"], "test": ["clinkart/gold/test.txt"]},
    "discotex-1": {"train": ["discotex/discotex_1_wiki_train_set_release.tsv"],
                   "test": ["discotex/gold/discotex_1_wiki_test_set_release.tsv"]},
    "discotex-2": {"train": ["discotex/discotex_2_train_clean_release.tsv"],
                   "test": ["discotex/gold/discotex_2_test_clean_release.tsv"]},
    "emit": {"train": ["emit/emit_train_A.csv"], "test": ["emit/gold/emit_test_A.csv"]},
    "geolingit": {"train": ["geolingit/train_a.tsv", "geolingit/train_b.tsv"],
                  "test": ["geolingit/dev_a.tsv", "geolingit/dev_b.tsv"]},
    "haspeede3": {"train": ["haspeede/training_textual.csv"], "test": ["haspeede/gold/test_textual_gold.csv"]},
    "haspeede3-contextual": {
        "train": ["haspeede/training_textual.csv", "haspeede/training_contextual.csv"],
        "test": ["haspeede/gold/test_textual_gold.csv", "haspeede/gold/test_contextual.csv"]},
    "hodi-a": {"train": ["hodi/HODI_2023_train_subtaskA.tsv"], "test": ["hodi/gold/HODI_2023_test_GOLD.tsv"]},
    "hodi-b": {"train": ["hodi/HODI_2023_train_subtaskB.tsv"], "test": ["hodi/gold/HODI_2023_test_GOLD.tsv"]},
    "langlearn": {
        "train": ["langlearn/Training_CItA.tsv", "langlearn/Essays_CItA.xml",
                  "langlearn/Train_COWS-L2H.tsv", "langlearn/Essays_COWS-L2H.xml"],
        "test": ["langlearn/gold/Test_CItA.tsv", "langlearn/gold/Essays_Test_CItA.xml",
                 "langlearn/gold/Test_COWS-L2H.tsv", "langlearn/gold/Essays_Test_COWS-L2H.xml"]},
    "nermud": {"train": ["nermud/WN_train.tsv"], "test": ["nermud/gold/WN_test.tsv"]},
    "politicit": {"train": ["politicit/politicIT_train_set.csv"],
                  "test": ["politicit/gold/politicIT_test_set_with_labels.csv"]},
    "wic-ita": {"train": ["wicita/train.jsonl"], "test": ["wicita/gold/test.jsonl"]},
}


def sample_files(task: str, split: str) -> list[Path]:
    """The bundled sample files of `task` for `split` ("train", or "test" with gold)."""
    from llamantino.evaluate.evalita import TASK_MODULES, get_task

    if task not in TASK_MODULES:
        get_task(task)  # an unknown name: the error lists the valid ones
    if split not in SPLITS:
        raise LlamantinoError(f"unknown sample split '{split}'; valid: {', '.join(SPLITS)}")
    if task not in SAMPLES:
        raise LlamantinoError(f"no bundled samples for EVALITA task '{task}'")
    return [SAMPLE_DIR / name for name in SAMPLES[task][split]]
