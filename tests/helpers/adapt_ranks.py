"""The QLoRA loop fed fixed micro-batches: the same global batches on 2 ranks (one micro-batch
each) and on one process (both, accumulated), so their updates can be compared exactly.

Run under torchrun as a script (`python -m torch.distributed.run ... adapt_ranks.py MODEL DATA OUT`)
or call `run_fixed` in-process for one process. The micro-batches of a step hold different
numbers of target tokens (rank 1's rows are short and padded), so a loss normalised per rank
instead of over the global batch gives another update.
"""

import random
import sys

from llamantino.core.runner import config_for
from llamantino.data.packing import Row, RowSource

STEPS, BATCH, LENGTH = 3, 2, 32


def global_batches(vocab: int = 400, seed: int = 0) -> list[list[list[Row]]]:
    """`STEPS` global batches of two micro-batches of `BATCH` rows: micro-batch 0 full rows of two
    packed documents, micro-batch 1 short rows (padded by collate), fewer targets."""
    rng = random.Random(seed)

    def doc(n):
        return [rng.randrange(4, vocab) for _ in range(n)]

    def row(*lengths):
        r = Row()
        for n in lengths:
            ids = doc(n)
            r.add(ids, ids)
        return r

    return [[[row(20, 12), row(32)], [row(9), row(5, 4)]] for _ in range(STEPS)]


class FixedRows(RowSource):
    """Rows from a list, with a resumable position."""

    def __init__(self, rows: list[Row]):
        self.rows, self.index = rows, 0

    def next_row(self):
        if self.index >= len(self.rows):
            return None
        self.index += 1
        return self.rows[self.index - 1]

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])


def rows_of(rank: int, world: int) -> list[Row]:
    """Rank r of 2 reads micro-batch r of every step; one process reads both in turn."""
    steps = global_batches()
    if world == 1:
        return [r for step in steps for micro in step for r in micro]
    return [r for step in steps for r in step[rank]]


def run_fixed(model: str, data: str, output: str) -> dict:
    """Train `STEPS` steps on the fixed batches; effective batch 4: accumulation 2 on one
    process, 1 on two. No dropout, so nothing random differs between the two."""
    from llamantino.train.adapt import check_inputs
    from llamantino.train.qlora import train

    cfg = config_for("adapt", model=model, data=[data], output=output, max_length=LENGTH, batch_size=BATCH,
                     effective_batch_size=2 * BATCH, gradient_accumulation=0, max_steps=STEPS,
                     learning_rate=1e-3, warmup_ratio=0.0, lora_dropout=0.0, logging_steps=1, lora_r=4)
    tokenizer = check_inputs(cfg)
    return train("adapt", cfg, lambda rank, world: FixedRows(rows_of(rank, world)), tokenizer=tokenizer)


if __name__ == "__main__":
    run_fixed(*sys.argv[1:4])
