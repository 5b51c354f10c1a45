"""The demo's text files and a `vocab extend` run, for the vocabulary and embedding tests."""

import json
from pathlib import Path

from llamantino.core.runner import config_for

DEMO = Path(__file__).resolve().parents[2] / "src" / "llamantino" / "assets" / "demo"
IT_TRAIN, IT_HELDOUT, EN_HELDOUT = DEMO / "it_train.txt", DEMO / "it_heldout.txt", DEMO / "en_heldout.txt"


def extend(model_dir, output, **settings):
    from llamantino.data.vocab import run

    values = {"model": str(model_dir), "data": [str(IT_TRAIN)], "output": str(output),
              "eval_data": [f"it={IT_HELDOUT}", f"en={EN_HELDOUT}"], **settings}
    result = run(config_for("vocab_extend", **values))
    report = json.loads((Path(output) / "vocab_report.json").read_text(encoding="utf-8"))
    return result, report
