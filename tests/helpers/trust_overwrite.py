"""Helpers first written for test_trust_overwrite.py that other test modules use too: shards."""

import pytest

from helpers.clean import mc4_shard_folder


@pytest.fixture
def shards(tmp_path):
    return mc4_shard_folder(tmp_path, 12)
