"""`DomainTermTagger`: finds domain-knowledge words in raw text (DSG-KD) and returns their character spans."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

Span = tuple[int, int]

_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
# a run of Latin letters and digits with inner hyphens / apostrophes ("COVID-19", "Crohn's"), holding a letter
_LATIN_RUN = re.compile(rf"[{_LATIN}0-9]+(?:[-'\u2019][{_LATIN}0-9]+)*")
_HAS_LETTER = re.compile(rf"[{_LATIN}]")
_LATIN_ALNUM = f"{_LATIN}0-9"


def dominant_script(text: str) -> str | None:
    """
    The main script of `text`, by words: `"LATIN"` when Latin words (runs as the script rule reads them) outnumber
    the words of all other scripts together, else the most frequent other script (`"HANGUL"`, `"CJK"`, ...: the
    first word of the letters' Unicode names); `None` when the text has no letters. Counting words, not letters,
    keeps a Korean note with long English terms Korean.
    """
    latin = sum(1 for m in _LATIN_RUN.finditer(text) if _HAS_LETTER.search(m.group()))
    others: dict[str, int] = {}
    previous = None
    for char in text:
        script = unicodedata.name(char, "UNKNOWN").split(" ")[0] if char.isalpha() else None
        if script is not None and script != "LATIN" and script != previous:
            others[script] = others.get(script, 0) + 1
        previous = script
    if not latin and not others:
        return None
    if latin > sum(others.values()):
        return "LATIN"
    return max(others, key=others.__getitem__)


class DomainTermTagger:
    r"""
    Finds the domain-knowledge words of a text, as character spans `(start, end)`.

    Three modes, one per instance:

    - **script rule** (default): maximal runs of Latin-script letters, with digits and inner hyphens or apostrophes
      ("pneumonia", "COVID-19", "Crohn's"), in text whose dominant script is not Latin, e.g. English medical terms
      in Korean clinical notes. Text mostly in Latin script has no domain words.
    - **lexicon**: the terms of `lexicon`, matched case-insensitively, longest first, not inside a longer run of
      Latin letters or digits, in any text.
    - **regex**: every non-empty match of `pattern`.

    Args:
        lexicon (`Iterable[str]`, *optional*): Domain terms; selects lexicon mode.
        pattern (`str`, *optional*): A regular expression; selects regex mode.

    Example:

    ```python
    >>> DomainTermTagger()("환자는 COVID-19 pneumonia로 입원.")
    [(4, 12), (13, 22)]
    ```
    """

    def __init__(self, lexicon: Iterable[str] | None = None, pattern: str | None = None):
        if lexicon is not None and pattern is not None:
            raise ValueError("DomainTermTagger: give a lexicon or a pattern, not both.")
        self.pattern: re.Pattern[str] | None = None
        self.lexicon: list[str] | None = None
        if pattern is not None:
            try:
                self.pattern = re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"DomainTermTagger: pattern={pattern!r} is not a valid regular expression: {error}"
                ) from None
        elif lexicon is not None:
            terms = sorted({t.strip() for t in lexicon if t.strip()}, key=lambda t: (-len(t), t.lower()))
            if not terms:
                raise ValueError("DomainTermTagger: the lexicon is empty; give at least one term or use the default.")
            self.lexicon = terms
            alternatives = "|".join(re.escape(t) for t in terms)
            self.pattern = re.compile(rf"(?<![{_LATIN_ALNUM}])(?:{alternatives})(?![{_LATIN_ALNUM}])", re.IGNORECASE)

    @property
    def mode(self) -> str:
        """`"script"`, `"lexicon"` or `"regex"`."""
        return "lexicon" if self.lexicon is not None else "regex" if self.pattern is not None else "script"

    def __call__(self, text: str) -> list[Span]:
        """
        Args:
            text (`str`): Raw text.

        Returns:
            `list[tuple[int, int]]`: Non-overlapping `(start, end)` character spans, in text order.
        """
        if not text:
            return []
        if self.pattern is not None:
            return [m.span() for m in self.pattern.finditer(text) if m.end() > m.start()]
        if dominant_script(text) in (None, "LATIN"):
            return []
        return [m.span() for m in _LATIN_RUN.finditer(text) if _HAS_LETTER.search(m.group())]
