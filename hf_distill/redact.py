"""Secrets kept out of what is printed or logged: Hub tokens and `Authorization` values in error messages."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

__all__ = ["known_tokens", "redact", "redact_exception"]

HIDDEN = "***"
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")  # an Authorization header's value
_HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")  # the shape of a Hugging Face access token


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """
    `text` with every credential replaced by `***`: the value after `Bearer` / `Basic` (8 characters or more),
    anything shaped like a Hugging Face token (`hf_...`), and each of `secrets` wherever it occurs (values shorter
    than 8 characters are not searched for: they would hide ordinary words).

    Args:
        text (`str`): A message about to be printed or logged (e.g. an HTTP error that echoes the request).
        secrets (`Iterable[str | None]`): Token values to hide (`None` entries are skipped).

    Returns:
        `str`: The message without them.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{HIDDEN}", text)
    return _HUB_TOKEN.sub(f"hf_{HIDDEN}", text)


def known_tokens(*extra: str | None) -> list[str]:
    """The Hub token values this process could send: `extra` (e.g. `--hub_token`), `HF_TOKEN` /
    `HUGGING_FACE_HUB_TOKEN` and the one `hf auth login` stored."""
    tokens = [*extra, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token

        tokens.append(get_token())
    except Exception:  # noqa: BLE001 - an unreadable token file: nothing more to hide
        pass
    return [t for t in tokens if t]


def redact_exception(error: BaseException, secrets: Iterable[str | None] = ()) -> BaseException:
    """`error`, its cause and its context with every string argument [`redact`]ed in place (their type and other
    attributes kept), so that a traceback printed from them shows no credential. Returns `error`."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(redact(a, secrets) if isinstance(a, str) else a for a in current.args)
        if hasattr(current, "server_message") and isinstance(current.server_message, str):
            current.server_message = redact(current.server_message, secrets)
        pending += [current.__cause__, current.__context__]
    return error
