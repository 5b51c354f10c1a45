"""What every EVALITA 2023 task does alike, checked once for each task on its bundled samples:
the reader (counts, ids, the paper's Table 1 instruction), answers (target <-> decode, garbage),
the official submission file written and read back, predictions that do not line up with the
items or the gold, and the bundled samples themselves. What a task does on its own is in
test_evalita_<task module>.py."""

import re

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import TASK_NAMES, get_task
from llamantino.evaluate.evalita.samples import sample_files

from helpers.evalita import TABLE_1, read_items

SAMPLE_COUNTS = {  # items in the bundled (train, test) samples
    "acti-a": (24, 10), "acti-b": (20, 8), "clinkart": (20, 8), "discotex-1": (20, 10), "discotex-2": (20, 10),
    "emit": (24, 10), "geolingit": (20, 10),
    "haspeede3": (20, 10),             # the 2 religious test tweets belong to subtask B
    "haspeede3-contextual": (20, 10),
    "hodi-a": (22, 10),
    "hodi-b": (22, 10),
    "langlearn": (28, 10),             # 14 training pairs, each also swapped
    "nermud": (24, 10),
    "politicit": (20, 8),              # one chunk per sample cluster
    "wic-ita": (20, 10),
}

# Table 1 fills two instructions with the paper's example: WiC-ITA's word and HaSpeeDe3
# contextual's account figures (the last, "Amici:", cut off in the table). Each item has its own there.
EXAMPLE_VALUES = {"wic-ita": ["affare"],
                  "haspeede3-contextual": ["2018-08-11", "0.0", "6.0", "2018-04-01", "554.0", "748.0", "301.0"]}


def papers_instruction(name: str) -> str:
    """A pattern for the task's Table 1 instruction, any value in place of the paper's example."""
    pattern = re.escape(TABLE_1[name] + (" 301.0" if name == "haspeede3-contextual" else ""))
    for value in EXAMPLE_VALUES.get(name, []):
        pattern = pattern.replace(re.escape(value), "(.+)", 1)
    return pattern


# an official submission file's name, where the task reads it from the name
SUBMISSION = {"geolingit": "team.standard.a.1"}
# a perfect run's primary figure, where it is not 1: GeoLingIt A averages over the 13 dev
# regions and the sample holds 10 of them
PERFECT = {"geolingit": 10 / 13}
# an answer that names nothing is no label, except where naming nothing is a label:
# no rationale (HODI B), no entity (NERMuD)
NOTHING = {"hodi-b": lambda item: (), "nermud": lambda item: ("O",) * len(item.gold)}
YES_NO_TASKS = ["acti-a", "haspeede3", "hodi-a", "langlearn", "wic-ita"]


def test_every_task_is_counted_here():
    assert sorted(SAMPLE_COUNTS) == sorted(TASK_NAMES)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_samples_read_with_counts_and_the_papers_instruction(name):
    task = get_task(name)
    assert task.name == name
    for split, expected in zip(("train", "test"), SAMPLE_COUNTS[name]):
        items = read_items(name, split)
        assert len(items) == expected
        assert len({it.id for it in items}) == expected
        for it in items:
            assert it.task == name
            filled = re.fullmatch(papers_instruction(name), it.instruction)
            assert filled and "{" not in it.instruction, (it.id, it.instruction)
            assert it.input.strip() and it.output.strip()
            assert it.gold is not None
            assert set(it.record()) == {"id", "task", "instruction", "input", "output"}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_sample_target_decodes_to_its_label(name):
    task = get_task(name)
    for split in ("train", "test"):
        for it in read_items(name, split):
            assert it.output == task.target(it.gold, it)
            assert task.decode(it.output, it) == it.gold, it.id      # every label survives its target


@pytest.mark.parametrize("name", TASK_NAMES)
def test_submission_written_and_read_back_scores_perfectly(name, tmp_path):
    task = get_task(name)
    items = read_items(name, "test")
    gold = task.read_gold(sample_files(name, "test"))
    # PoliticIT's items are chunks of an author's tweets; its gold is one label per author
    keys = [it.meta["cluster"] if name == "politicit" else it.id for it in items]
    assert gold == dict(zip(keys, (it.gold for it in items)))
    path = tmp_path / SUBMISSION.get(name, "submission")
    task.write_predictions(items, [task.decode(it.output, it) for it in items], path)
    pred = task.read_predictions(path)
    assert list(pred) == list(gold)
    assert task.score(gold, pred)[task.primary_metric] == pytest.approx(PERFECT.get(name, 1.0))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_garbage_answers_name_no_label(name):
    task = get_task(name)
    item = read_items(name, "test")[0]
    nothing = NOTHING.get(name, lambda item: None)(item)
    for answer in ("", "   ", "boh", "Non saprei proprio.", "###", "[INST]"):
        assert task.decode(answer, item) == nothing, answer


@pytest.mark.parametrize("name", TASK_NAMES)
def test_predictions_must_line_up_with_the_items_and_the_gold(name, tmp_path):
    task = get_task(name)
    items = read_items(name, "test")
    answers = [task.decode(it.output, it) for it in items]
    with pytest.raises(LlamantinoError, match="items but"):
        task.write_predictions(items, answers[:-1], tmp_path / SUBMISSION.get(name, "submission"))
    gold = task.read_gold(sample_files(name, "test"))
    first = next(iter(gold))
    missing = {k: v for k, v in gold.items() if k != first}
    with pytest.raises(LlamantinoError, match=rf"1 gold id\(s\) have no prediction \(e.g. {re.escape(first)}\)"):
        task.score(gold, missing)
    with pytest.raises(LlamantinoError, match=r"1 prediction id\(s\) are not in the gold \(e.g. nope\)"):
        task.score(gold, {**gold, "nope": gold[first]})
    with pytest.raises(LlamantinoError, match="1 gold id.*no prediction.*1 prediction id.*nope"):
        task.score(gold, {**missing, "nope": gold[first]})


@pytest.mark.parametrize("name", YES_NO_TASKS)
def test_yes_no_decoders_are_tolerant_and_garbage_is_none(name):
    task = get_task(name)
    for answer, label in [("si", 1), ("Sì.", 1), ("SI!", 1), ("sì, il testo lo contiene", 1),
                          ("no", 0), ("No.", 0), ("  NO  ", 0), ("no, non direi", 0)]:
        assert task.decode(answer) == label, answer
    for garbage in ["", "forse", "non saprei", "###", None]:
        assert task.decode(garbage) is None
    assert task.target(1) == "si" and task.target(0) == "no"
    with pytest.raises(LlamantinoError):
        task.target(2)


@pytest.mark.parametrize("name", YES_NO_TASKS)
def test_both_answers_occur_in_yes_no_training_samples(name):
    assert {it.output for it in read_items(name, "train")} == {"si", "no"}


def test_table_1_with_the_papers_examples_filled_in():
    from llamantino.data.prompts import evalita_instruction

    assert evalita_instruction("wic-ita", word="affare") == TABLE_1["wic-ita"]
    # the paper's example stops at "Amici:" (its figure is cut off in the table)
    contextual = evalita_instruction("haspeede3-contextual", date="2018-08-11", retweets="0.0", likes="6.0",
                                     created="2018-04-01", posts="554.0", followers="748.0", friends="301.0")
    assert contextual == TABLE_1["haspeede3-contextual"] + " 301.0"


def test_every_task_has_bundled_sample_files():
    for name in TASK_NAMES:
        for split in ("train", "test"):
            files = sample_files(name, split)
            assert files and all(p.is_file() for p in files), (name, split)
    with pytest.raises(LlamantinoError, match="unknown EVALITA task 'emitt'"):
        sample_files("emitt", "train")
    with pytest.raises(LlamantinoError, match="unknown sample split 'dev'"):
        sample_files("emit", "dev")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_missing_file_is_named(name, tmp_path):
    # each sample file in turn, named as the task expects it, is missing
    present = sample_files(name, "train")
    for i, file in enumerate(present):
        missing = tmp_path / file.name
        with pytest.raises(LlamantinoError, match=f"{re.escape(str(missing))}: no such file"):
            get_task(name).read([*present[:i], missing, *present[i + 1:]])
