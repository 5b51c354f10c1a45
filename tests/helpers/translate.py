"""Helpers first written for test_translate.py that other test modules use too: FORMAT_RECORDS,
crafted_argosmodel, stand_in, write_jsonl."""

import json

import pytest

SENTENCES = [
    "The cat sleeps on the sofa.", "Rain falls on the quiet town.", "We will go to the sea tomorrow.",
    "Language models predict the next word.", "My sister bakes bread every Sunday.",
    "The train to Rome leaves at nine.", "Please close the window before you leave.",
    "This recipe needs two eggs and some flour.",
]


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory):
    from llamantino.demo.tiny_translator import build_tiny_translator

    return build_tiny_translator(tmp_path_factory.mktemp("stand-in"))


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


FORMAT_RECORDS = {
    "ultrachat": [{"id": "7", "data": SENTENCES[:4]}, {"id": "8", "data": SENTENCES[4:6]}],
    "ultrachat_200k": [{"prompt": SENTENCES[0], "prompt_id": "abc",
                        "messages": [{"role": "system", "content": SENTENCES[7]},
                                     {"role": "user", "content": SENTENCES[0]},
                                     {"role": "assistant", "content": SENTENCES[1]},
                                     {"role": "user", "content": SENTENCES[2]},
                                     {"role": "assistant", "content": SENTENCES[3]}]}],
    "dolly": [{"instruction": SENTENCES[0], "context": "", "response": SENTENCES[1], "category": "open_qa"},
              {"instruction": SENTENCES[2], "context": SENTENCES[3], "response": SENTENCES[4], "category": "qa"}],
    "alpaca": [{"instruction": SENTENCES[5], "input": "", "output": SENTENCES[6]},
               {"instruction": SENTENCES[7], "input": SENTENCES[0], "output": SENTENCES[1]}],
}


def crafted_argosmodel(tmp_path, good, name, add):
    """The stand-in package with one more member, written by `add(zipfile)`."""
    import zipfile

    path = tmp_path / f"{name}.argosmodel"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as zf:
        for info in source.infolist():
            zf.writestr(info, source.read(info))
        add(zf)
    return path
