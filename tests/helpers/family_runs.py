"""The dialogues, the short system prompt and the small settings of the runs on every family."""

import json

DIALOGUES = [{"messages": [{"role": "user", "content": f"Domanda {i}: come stai?"},
                           {"role": "assistant", "content": f"Risposta {i}: bene, grazie."}]} for i in range(8)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


BRIEF = "Rispondi in breve."
SMALL = ["--max-length", "96", "--batch-size", "2", "--save-steps", "0", "--logging-steps", "1",
         "--no-gradient-checkpointing"]


def answer_runs(example) -> list[list[int]]:
    """The runs of token ids an encoded example trains on (labels other than IGNORE), in order."""
    from llamantino.models.loss import IGNORE

    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])
