"""HaSpeeDe3 (Political and Religious Hate Speech Detection), subtask A: political tweets.

`haspeede3` reads the textual files; `haspeede3-contextual` reads the same tweets joined,
by tweet id, with the contextual metadata file, whose tweet and account statistics fill
the Contesto placeholders of the instruction.

Released files are comma-separated CSV with a header and every field double-quoted:
  training_textual.csv, test_textual_gold.csv   anonymized_tweet_id, anonymized_text, label, dataset
  training_contextual.csv, test_contextual.csv  anonymized_tweet_id, created_at, retweet_count,
      favorite_count, source, is_reply, is_retweet, is_quote, anonymized_user_id,
      user_created_at, statuses_count, followers_count, friends_count, anonymized_description, dataset
Columns are found by name, so the column order of the test files (not verified) does not
matter, and a file is told textual or contextual by its columns. label is 1 for hateful;
a file without it (the blind test_textual.csv) gives unlabelled items.

Subtask A is ranked on political tweets only, so rows whose `dataset` is `test_religious`
(the XReligiousHate part of subtask B, in the same test file) are left out.

Submission: CSV `anonymized_tweet_id,label` with 0/1 labels. Metric: (F1 of the hate
class + F1 of the non-hate class) / 2, as the organisers' README defines it.

Official scorer: not published (the repository holds the README and encrypted data only),
so the following could not be checked against it: both classes always count (a class
with no gold and no predicted tweet scores F1 0); rows are matched by tweet id, not by
line, and missing, extra or repeated ids are refused; an empty label cell is an answer
that could not be decoded, scored wrong; a value other than 0 and 1 is refused.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, YesNoTask, check_alignment, check_unique, parse_label,
                                              read_label_submission, read_table, require_columns, require_gold,
                                              write_label_submission)

ID = "anonymized_tweet_id"
POLITICS = {"training_politics", "test_politics"}
RELIGIOUS = {"test_religious"}  # subtask B only

# Instruction placeholder -> contextual file column.
CONTEXT_FIELDS = {
    "date": "created_at",
    "retweets": "retweet_count",
    "likes": "favorite_count",
    "created": "user_created_at",
    "posts": "statuses_count",
    "followers": "followers_count",
    "friends": "friends_count",
}

BINARY = {"0": 0, "1": 1}


def binary_scores(gold: dict, pred: dict, task: str, names=("non_hate", "hate")) -> dict:
    """Macro-F1 over classes 0 and 1, their F1s and accuracy; None predictions are wrong."""
    check_alignment(gold, pred, task)
    require_gold(gold, task)
    ids = list(gold)
    g, p = [gold[k] for k in ids], [pred[k] for k in ids]
    table = metrics.per_class(g, p, (0, 1))
    return {"macro_f1": (table[0]["f1"] + table[1]["f1"]) / 2,
            f"f1_{names[0]}": table[0]["f1"], f"f1_{names[1]}": table[1]["f1"],
            "accuracy": metrics.accuracy(g, p)}


class HaSpeeDe(YesNoTask):
    primary_metric = "macro_f1"

    def __init__(self, name: str, contextual: bool):
        self.name = name
        self.contextual = contextual
        self.official = f"HaSpeeDe3 subtask A ({'contextual' if contextual else 'textual'})"

    # --- data ------------------------------------------------------------------------
    def read(self, paths) -> list[Item]:
        tweets, context = [], {}
        seen, context_seen = set(), set()
        for path in map(Path, paths):
            header, rows = read_table(path)
            if "created_at" in header:
                if not self.contextual:
                    raise LlamantinoError(f"{path}: contextual metadata file given to {self.name}, "
                                          "which reads textual files only (use haspeede3-contextual)")
                cols = require_columns(header, [ID, *CONTEXT_FIELDS.values()], path)
                for line, fields in rows:
                    tweet_id = fields[cols[ID]].strip()
                    check_unique(context_seen, tweet_id, path, line)
                    context[tweet_id] = {key: fields[cols[column]].strip()
                                         for key, column in CONTEXT_FIELDS.items()}
                continue
            cols = require_columns(header, [ID, "anonymized_text", "dataset"], path)
            for line, fields in rows:
                tweet_id = fields[cols[ID]].strip()
                check_unique(seen, tweet_id, path, line)
                dataset = parse_label(fields[cols["dataset"]], {d: d for d in sorted(POLITICS | RELIGIOUS)},
                                      path, line, "dataset")
                if dataset in RELIGIOUS:
                    continue
                gold = parse_label(fields[header.index("label")], BINARY, path, line, "label") \
                    if "label" in header else None
                tweets.append((path, tweet_id, fields[cols["anonymized_text"]], gold))
        if not tweets:
            raise LlamantinoError(f"{self.name}: no political tweets in {', '.join(map(str, paths))} "
                                  "(a textual file with anonymized_text and dataset columns is needed)")
        items = []
        for path, tweet_id, text, gold in tweets:
            if self.contextual:
                if tweet_id not in context:
                    raise LlamantinoError(f"{path}: tweet '{tweet_id}' has no row in the contextual "
                                          "metadata files given")
                instruction = evalita_instruction(self.name, **context[tweet_id])
            else:
                instruction = evalita_instruction(self.name)
            items.append(Item(id=tweet_id, task=self.name, instruction=instruction, input=text,
                              output="" if gold is None else self.target(gold), gold=gold))
        return items

    # --- answers ---------------------------------------------------------------------

    # --- official files --------------------------------------------------------------
    def read_predictions(self, path) -> dict:
        return read_label_submission(path, ID, "label", BINARY)

    def write_predictions(self, items, predictions, path) -> None:
        write_label_submission(self.name, items, predictions, path, [ID, "label"])

    # --- metric ----------------------------------------------------------------------
    def score(self, gold: dict, pred: dict) -> dict:
        return binary_scores(gold, pred, self.name)


TASKS = {
    "haspeede3": HaSpeeDe("haspeede3", contextual=False),
    "haspeede3-contextual": HaSpeeDe("haspeede3-contextual", contextual=True),
}
