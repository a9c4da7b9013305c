"""Credentials are redacted from messages before they are printed (`hf_distill.redact`)."""

import pytest

from hf_distill.redact import known_tokens, redact

TOKEN = "hf_FAKEtokenNEVERprinted0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"403 Forbidden (Authorization: Bearer {TOKEN})", "403 Forbidden (Authorization: Bearer ***)"),
        ("{'authorization': 'bearer abc.def-123'}", "{'authorization': 'bearer ***'}"),
        ("Authorization: Basic dXNlcjpwYXNz, retry", "Authorization: Basic ***, retry"),
        (f"url=https://hub/api?token={TOKEN}&x=1", "url=https://hub/api?token=hf_***&x=1"),
        ("counted 4096 tokens in 12 blocks", "counted 4096 tokens in 12 blocks"),  # ordinary text stays
        ("a basic check failed", "a basic check failed"),
        ("hf_short and hf_ alone", "hf_short and hf_ alone"),  # too short for a token
    ],
)
def test_credentials_are_replaced(text, expected):
    assert redact(text) == expected


def test_given_secrets_are_replaced_wherever_they_occur_and_short_ones_are_not_searched():
    secret = "s3cr3t-value-without-hf-shape"
    assert redact(f"a{secret}b {secret}", [secret, None, "abc"]) == "a***b ***"
    assert redact("abc is a word", ["abc"]) == "abc is a word"


def test_known_tokens_reads_the_environment_and_the_given_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "from-the-environment")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    tokens = known_tokens("from-the-command-line", None)
    assert tokens[:2] == ["from-the-command-line", "from-the-environment"]
    assert None not in tokens
