"""Credentials are redacted from messages before they are printed (`hf_distill.redact`)."""

import sys

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


def test_a_failed_push_from_a_users_script_raises_the_hubs_error_without_credentials(tmp_path, monkeypatch):
    """`DistillationTrainer.push_to_hub` (not only the recipes): the same exception type, its message and its cause's
    redacted, so a traceback printed by a user's script holds no token."""
    from conftest import PadCollator, lm_dataset, make_config, tiny_llama
    from huggingface_hub.errors import HfHubHTTPError, Response  # the Response of the Hub client's HTTP library

    import hf_distill.training.trainer as trainer_module
    from hf_distill import DistillationTrainer

    def failing_push(*args, **kwargs):
        http = sys.modules[Response.__module__.split(".")[0]]  # the Hub client's HTTP library (httpx2 in 2.x)
        response = Response(403, request=http.Request("POST", "https://hub.example/api/models"))
        try:
            raise ValueError(f"sent headers {{'authorization': 'Bearer {TOKEN}'}}")
        except ValueError as cause:
            raise HfHubHTTPError(f"403 Forbidden: echo Bearer {TOKEN}", response=response) from cause

    monkeypatch.setattr(trainer_module, "push_staged_student", failing_push)
    trainer = DistillationTrainer(model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(seed=2),
                                  args=make_config(tmp_path), train_dataset=lm_dataset(n=4),
                                  data_collator=PadCollator())  # fmt: skip
    trainer.hub_model_id = "me/student"
    with pytest.raises(HfHubHTTPError) as raised:
        trainer.push_to_hub(token=TOKEN)
    assert str(raised.value) == "403 Forbidden: echo Bearer ***"
    assert str(raised.value.__cause__) == "sent headers {'authorization': 'Bearer ***'}"
    assert TOKEN not in "".join(__import__("traceback").format_exception(raised.value))
