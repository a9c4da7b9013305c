"""Reading the user's files with errors that name the file: text (YAML, JSON Lines, CSV) and model weights; writing
small JSON records whole or not at all."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = [
    "check_text_file",
    "checked_load",
    "checked_weight_files",
    "one_line",
    "read_text_file",
    "write_json_atomic",
]


def write_json_atomic(path: str, record: Any, indent: int | None = 2) -> None:
    """Write `record` as JSON to `path` through a temporary file and a rename: a reader sees the old file or the whole
    new one, never a part."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=indent)
    os.replace(tmp, path)


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:limit]


def check_text_file(path: str, chunk_size: int = 1 << 20) -> None:
    """
    Stream through `path` and check it is non-empty UTF-8 text (without holding the whole file).

    Raises:
        `ValueError`: naming the file, for a file that cannot be read, is empty, or is not UTF-8.
    """
    import codecs

    decoder, offset, seen = codecs.getincrementaldecoder("utf-8")(), 0, False
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    _not_utf8(path, offset + error.start, chunk[error.start : error.start + 4])
                seen = seen or bool(chunk.strip())
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except OSError as error:
        raise ValueError(f"{path!r} cannot be read: {error.strerror or one_line(error)}.") from None
    except UnicodeDecodeError:
        _not_utf8(path, offset, b"")
    if not seen:
        raise ValueError(f"{path!r} is empty.")


def _not_utf8(path: str, offset: int, data: bytes) -> NoReturn:
    raise ValueError(f"{path!r} is not UTF-8 text (byte {offset}: {data!r}); save it as UTF-8.") from None


def read_text_file(path: str) -> str:
    """
    The text of `path`, which must be non-empty UTF-8.

    Raises:
        `ValueError`: naming the file, for a file that cannot be read, is empty, or is not UTF-8.
    """
    check_text_file(path)
    with open(path, encoding="utf-8") as f:
        return f.read()


def _weight_files(name: str) -> list[str]:
    """The weight files of a local model folder (empty for a hub id)."""
    if not os.path.isdir(name):
        return []
    return sorted(glob.glob(os.path.join(name, "*.safetensors")) + glob.glob(os.path.join(name, "*.bin")))


def checked_weight_files(folder: str) -> str | None:
    """What is wrong with the safetensors files of a local folder (a truncated or corrupt file), or `None`."""
    from safetensors import safe_open

    for path in _weight_files(folder):
        if not path.endswith(".safetensors"):
            continue
        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except Exception:  # noqa: BLE001 - safetensors raises its own error type for every malformed file
            return f"{path} is not a complete safetensors file ({os.path.getsize(path)} bytes; truncated or corrupt)"
    return None


def _local_path(name: str) -> bool:
    """Whether `name` can only mean a local path, not a Hub id (`org/name`): absolute, `./`, `../`, `~`, or more
    than one `/`."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or name.endswith("/")


def checked_load(load: Callable[..., Any], name: str, field: str, **kwargs: Any) -> Any:
    """
    `load(name, **kwargs)` (e.g. `AutoModelForCausalLM.from_pretrained`) with a one-line error that names the field
    and, for a local folder, the unreadable weight file (truncated, corrupt, missing).

    Raises:
        `ValueError`: `"{field}={name!r} could not be loaded: {file}: ..."`.
    """
    if _local_path(name) and not os.path.exists(os.path.expanduser(name)):
        raise ValueError(
            f"{field}={name!r}: no such folder (a local path; a Hub model is named 'org/name'): fix the path."
        )
    broken = checked_weight_files(name)
    if broken is not None:
        raise ValueError(f"{field}={name!r} could not be loaded: {broken}: save or download the model again.")
    try:
        return load(name, **kwargs)
    except Exception as error:  # noqa: BLE001 - from_pretrained raises many types; the user needs one line
        if isinstance(error, MemoryError):
            raise
        files = ""
        if os.path.isdir(name):
            files = f" ({', '.join(os.path.basename(p) for p in _weight_files(name)) or 'no weight files'})"
        raise ValueError(f"{field}={name!r} could not be loaded{files}: {one_line(error)}") from error
