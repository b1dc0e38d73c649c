from __future__ import annotations

import gzip
import hashlib
import warnings
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load

from batchrun import tokens
from batchrun.tokens import TokenCounter, UnknownModelWarning

# The OpenAI cookbook's example (How_to_count_tokens_with_tiktoken.ipynb); the API reported
# 129 prompt tokens for gpt-3.5-turbo / gpt-4 and 124 for gpt-4o / gpt-4o-mini.
COOKBOOK = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4o-mini", 124), ("gpt-4o", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)],
)
def test_cookbook_counts(model: str, expected: int) -> None:
    assert TokenCounter(model).count_messages(COOKBOOK) == expected


def test_encodings_build_offline_from_bundled_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))

    def no_network(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("tiktoken tried to download a vocabulary")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    tokens.get_encoding.cache_clear()
    try:
        for name in ("o200k_base", "cl100k_base"):
            enc = tokens.get_encoding(name)
            assert isinstance(enc, tiktoken.Encoding)
            assert enc.decode(enc.encode("héllo wörld, 東京")) == "héllo wörld, 東京"
        assert tokens.get_encoding("o200k_base").encode("hello world") == [24912, 2375]
        assert tokens.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    finally:
        tokens.get_encoding.cache_clear()


def test_bundled_file_with_wrong_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    bad = tmp_path / "o200k_base.tiktoken.gz"
    bad.write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    monkeypatch.setattr(tokens, "_bundled_file", lambda name: bad)
    tokens.get_encoding.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="sha256"):
            tokens.get_encoding("o200k_base")
    finally:
        tokens.get_encoding.cache_clear()


def test_model_mapping_and_unknown_model_warning() -> None:
    assert TokenCounter("gpt-4o-mini-2024-07-18").encoding_name == "o200k_base"
    assert TokenCounter("gpt-35-turbo").encoding_name == "cl100k_base"
    assert TokenCounter("text-embedding-3-small").encoding_name == "cl100k_base"
    with pytest.warns(UnknownModelWarning, match="my-local-llama"):
        c = TokenCounter("my-local-llama")
    assert c.encoding_name == "o200k_base" and not c.model_known


def test_list_of_parts_and_names_do_not_crash() -> None:
    c = TokenCounter("gpt-4o-mini")
    text_only = c.count_messages([{"role": "user", "content": "describe this"}])
    parts = c.count_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe this"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                ],
            }
        ]
    )
    assert parts == text_only + tokens.IMAGE_PART_TOKENS
    named = c.count_messages([{"role": "user", "name": "bob", "content": "describe this"}])
    assert named == text_only + c.count_text("bob") + 1
    assert c.count_messages([{"role": "assistant", "content": None}]) == 3 + c.count_text("assistant") + 3


def test_schema_overhead_counts_the_schema_without_strict_keywords() -> None:
    c = TokenCounter("gpt-4o-mini")
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert c.schema_overhead(schema) == c.count_text('{"properties":{"a":{"type":"string"}},"type":"object"}') + 9
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    }
    assert c.count_chat_request(body) == c.count_messages(body["messages"]) + c.schema_overhead(schema)


def test_batch_counts_equal_single_counts() -> None:
    c = TokenCounter("gpt-4o-mini")
    texts = ["", "a", "hello world", "<|endoftext|> is text here", "東京 " * 50]
    assert c.count_texts(texts) == [c.count_text(t) for t in texts]


def test_no_warning_for_known_models() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TokenCounter("gpt-4.1-mini")


def test_the_vocabulary_cache_gives_the_same_ranks_and_a_bad_copy_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHRUN_CACHE_DIR", str(tmp_path))
    data = gzip.decompress(tokens._bundled_file("cl100k_base").read_bytes())
    sha = hashlib.sha256(data).hexdigest()
    first = tokens._parsed_ranks("cl100k_base", data, sha)  # parsed, and the copy written
    (copy,) = tmp_path.glob("cl100k_base-*.marshal")
    assert tokens._parsed_ranks("cl100k_base", data, sha) == first  # from the copy
    copy.write_bytes(b"not marshal")
    assert tokens._parsed_ranks("cl100k_base", data, sha) == first  # ignored, made again
    assert copy.read_bytes() != b"not marshal"


def test_a_built_encoding_keeps_no_python_vocabulary_and_still_pickles() -> None:
    """The ranks dict (~24 MB for o200k) is dropped once the Rust encoder has its copy; a pickle of the
    Encoding (a Ray worker's counter) carries the vocabulary again and counts the same."""
    import pickle

    from batchrun.tokens import get_encoding

    enc = get_encoding("o200k_base")
    assert not isinstance(enc._mergeable_ranks, dict)
    copy = pickle.loads(pickle.dumps(enc))
    assert isinstance(copy._mergeable_ranks, dict) and len(copy._mergeable_ranks) == 199_998
    text = "Tokens, counted offline: ünïcode 🙂 and numbers 12345."
    assert copy.encode_ordinary(text) == enc.encode_ordinary(text) and copy.n_vocab == enc.n_vocab
