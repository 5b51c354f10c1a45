"""Instruction-tuning settings and a Dolly-format writer for the training tests."""

import json
import random
from pathlib import Path

from llamantino.core.runner import config_for

WORDS = ("il gatto dorme sul divano mentre la pioggia cade sulla città domani andremo al mare "
         "Roma Milano Napoli Torino sono città italiane").split()


def write_dolly(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            record = {"instruction": say(rng.randint(3, 10)), "context": say(rng.randint(1, 15)) if i % 2 else "",
                      "response": say(rng.randint(2, 25)), "category": "open_qa"}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def settings(model, data, output, **overrides):
    values = dict(model=str(model), data=[str(data)], output=str(output), max_length=256, batch_size=2,
                  effective_batch_size=4, max_steps=4, learning_rate=1e-3, logging_steps=1, save_steps=2)
    values.update(overrides)
    return config_for("instruct", **values)
