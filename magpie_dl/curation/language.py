"""Language tag of an instruction, with the `lingua-language-detector` package.

lingua (maintained, pure offline: its n-gram models ship inside the wheel) labels a text
with one of 75 languages. We return ISO 639-1 codes in upper case (``EN``, ``ZH``), the
spelling of the released Magpie data, and ``None`` when the text has no detectable
language (digits, symbols, empty) or the top two languages are closer than
``min_relative_distance``.

Its low-accuracy mode is much lighter but unreliable on the short texts instructions
often are (it labelled "How do I sort a list in Python?" as German here), so high
accuracy is the default; restricting ``languages`` is the way to make it fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class LanguageDetector:
    """Detects the language of texts; thread-parallel inside lingua.

    Args:
        languages: ISO 639-1 codes to choose among (None: all 75 lingua knows).
        low_accuracy: lingua's low-accuracy mode (faster, poor on short texts).
        min_relative_distance: 0..0.99; above 0, ambiguous texts get ``None``.

    Examples:
        >>> LanguageDetector(["en", "de"]).detect(["How do I sort a list?"])  # doctest: +SKIP
        ['EN']
    """

    def __init__(
        self,
        languages: Sequence[str] | None = None,
        low_accuracy: bool = False,
        min_relative_distance: float = 0.0,
    ) -> None:
        try:
            from lingua import IsoCode639_1, LanguageDetectorBuilder
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "language detection needs lingua-language-detector: pip install -e '.[curation]'"
            ) from exc

        if languages:
            codes = []
            for code in languages:
                try:
                    codes.append(IsoCode639_1.from_str(code.lower()))
                except ValueError as exc:
                    raise ValueError(f"unknown ISO 639-1 language code {code!r}") from exc
            if len(codes) < 2:
                raise ValueError("give at least two languages to choose among")
            builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
        else:
            builder = LanguageDetectorBuilder.from_all_languages()
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        if min_relative_distance:
            builder = builder.with_minimum_relative_distance(min_relative_distance)
        self._detector: Any = builder.build()

    def detect(self, texts: Sequence[str]) -> list[str | None]:
        """One ISO 639-1 code (upper case) or ``None`` per text, in order."""
        clean = [t if isinstance(t, str) else "" for t in texts]
        found = self._detector.detect_languages_in_parallel_of(clean)
        return [lang.iso_code_639_1.name if lang is not None else None for lang in found]
