"""fileio.read_json_object: the one reader of JSON files others may have written."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import read_json_object


@pytest.mark.parametrize("data, message", [
    (b'{"a": 1}', None),
    (b"[1, 2]", "config.json: a JSON list, not an object"),
    (b'"text"', "config.json: a JSON str, not an object"),
    (b'{"a": ', "config.json: unreadable config (JSONDecodeError: Expecting value"),
    (b'{"caf\xe9": 1}', "config.json: unreadable config (UnicodeDecodeError"),
    (b"[" * 100_000 + b"]" * 100_000, "config.json: unreadable config (RecursionError"),
])
def test_a_json_object_or_one_line(tmp_path, data, message):
    (tmp_path / "config.json").write_bytes(data)
    if message is None:
        assert read_json_object(tmp_path / "config.json", "config") == {"a": 1}
        return
    with pytest.raises(LlamantinoError) as info:
        read_json_object(tmp_path / "config.json", "config")
    assert str(info.value).startswith(f"{tmp_path / message}") and "\n" not in str(info.value)


def test_a_base_whose_config_is_not_an_object_is_refused_where_it_was_passed_over(tmp_path):
    # Before, build's dtype choice and merge's quantization check took such a config as
    # "no dtype" and "not quantized" and went on.
    from llamantino.models.merge import check_not_quantized
    from llamantino.release.build import chain_dtype

    (tmp_path / "config.json").write_text("[1, 2]")
    for call in (lambda: check_not_quantized(tmp_path), lambda: chain_dtype(tmp_path, [], "auto")):
        with pytest.raises(LlamantinoError, match="config.json: a JSON list, not an object"):
            call()
