"""Helpers first written for test_trust_overwrite.py that other test modules use too: shards."""

import pytest

from helpers.clean import page, write_jsonl


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    records = [{"text": page(f"Pagina numero {i} del corpus di prova, scritta per questo test."),
                "url": f"https://example.it/{i}", "timestamp": "2020-01-01"} for i in range(12)]
    write_jsonl(folder / "c4-it.tfrecord-00000-of-01024.json.gz", records)
    return folder
