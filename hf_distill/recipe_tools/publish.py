"""The end of a recipe run: the student and its files are saved locally first, then pushed; a failed push is one line
and loses nothing."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..files import one_line
from ..redact import known_tokens, redact

__all__ = ["fail", "save_then_push"]


def fail(message: str, code: int) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (2: bad input, 1: the run failed)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def save_then_push(trainer: Any, write_local: Callable[[], None]) -> None:
    """
    Save the student to `output_dir` (every process: ZeRO-3 / FSDP gather), write the run's other local artefacts
    with `write_local` (main process) and the model card, then push with `--push_to_hub`.

    A failed push exits with code 1 and one line that says where the local files are; the token is never in it
    (credentials in the error, as a Hub or proxy error page that echoes the request, are redacted: [`redact`]).
    """
    args = trainer.args
    trainer.save_model(args.output_dir, _internal_call=True)  # no push yet: a failed push must lose nothing
    if trainer.is_world_process_zero():
        write_local()
        trainer.create_model_card()
    if not args.push_to_hub:
        return
    try:
        trainer.push_to_hub()
    except Exception as error:  # noqa: BLE001 - network, permissions, quota: one line, local files kept
        reason = redact(one_line(error, limit=100_000), known_tokens(getattr(trainer, "_hub_token", None)))[:300]
        fail(
            f"the push to {trainer.hub_model_id} failed ({reason}); the student and its files are saved in "
            f"{os.path.abspath(args.output_dir)}: push them with `hf upload` or re-run with --push_to_hub later.",
            1,
        )
