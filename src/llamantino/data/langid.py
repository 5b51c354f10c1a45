"""Language identification for corpus cleaning, with pluggable detectors.

Every detector answers one question: which language (ISO 639-1 code, e.g. "it") is a
text mostly written in? Each works offline; its model ships inside its PyPI package.

* `py3langid` (default): a naive Bayes model over byte n-grams; fast, deterministic.
* `langdetect`: what the clean_mc4_it corpus was built with. It samples n-grams at
  random, so its seed is fixed here to make every answer reproducible.

`benchmarks/bench_clean.py --langid` measures their speed and agreement.
"""

from __future__ import annotations

import functools
import os

from llamantino.core.errors import LlamantinoError

UNKNOWN = "und"


class Py3LangidDetector:
    name = "py3langid"

    def __init__(self):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE)

    def detect(self, text: str) -> str:
        if not text.strip():
            return UNKNOWN
        return self._identifier.classify(text)[0]

    def languages(self) -> set[str]:
        return set(self._identifier.labels)


class LangdetectDetector:
    name = "langdetect"

    def __init__(self):
        from langdetect import DetectorFactory

        # Each langdetect Detector seeds its own random generator from the factory's
        # seed: with a fixed seed the answer depends on the text alone, not on what ran
        # before it or in which process.
        DetectorFactory.seed = 0

    def detect(self, text: str) -> str:
        import langdetect
        from langdetect.lang_detect_exception import LangDetectException

        try:
            lang = langdetect.detect(text)
        except LangDetectException:  # no letters at all: nothing to identify
            return UNKNOWN
        # langdetect names a few languages with a region (zh-cn, zh-tw): keep the language.
        return lang.split("-")[0]

    def languages(self) -> set[str]:
        from langdetect.detector_factory import PROFILES_DIRECTORY

        return {name.split("-")[0] for name in os.listdir(PROFILES_DIRECTORY)}


DETECTORS = {"py3langid": Py3LangidDetector, "langdetect": LangdetectDetector}
DEFAULT = "py3langid"


@functools.cache
def make_detector(name: str = DEFAULT):
    """The detector called `name`; one per process (they hold no state between texts)."""
    if name not in DETECTORS:
        from llamantino.core.config import closest

        raise LlamantinoError(f"unknown language detector '{name}'{closest(name, DETECTORS)}; "
                              f"valid: {', '.join(DETECTORS)}")
    return DETECTORS[name]()
