"""Stage 4: keep captions in the wanted languages (langdetect, seeded).

langdetect draws random numbers while it detects; each worker builds its own `DetectorFactory`
with the configured seed in `setup()` (never the library's global one), and every detector
re-seeds per text, so a caption gets the same answer on every worker, in any order, on rerun.

The stage runs after query matching: captions without a query never pay for detection.
Repeated captions (boilerplate alt texts are common on the web) are answered from a per-worker
cache.
"""

from __future__ import annotations

import collections

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.config import LanguageConfig
from pipeline.progress import ProgressLog
from pipeline.records import FAILED, KEPT, Reason, Stage, StageResult, tagged_failure

UNDETERMINED = "und"  # ISO 639-2 "undetermined": detection was not asked for
CACHE_ENTRIES = 100_000


class LanguageDetector:
    """Best language and its probability for a text, or None when it has no letters to go on."""

    def __init__(self, seed: int):
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

        self._factory = DetectorFactory()
        self._factory.load_profile(PROFILES_DIRECTORY)
        self._factory.set_seed(seed)
        self._cache: collections.OrderedDict[str, tuple[str, float] | None] = (
            collections.OrderedDict()
        )

    def detect(self, text: str) -> tuple[str, float] | None:
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        from langdetect.lang_detect_exception import LangDetectException

        detector = self._factory.create()
        detector.append(text)
        try:
            best = detector.get_probabilities()[0]
            answer = (best.lang, float(best.prob))
        except (LangDetectException, IndexError):
            answer = None
        self._cache[text] = answer
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return answer


class FilterLanguageFn(beam.DoFn):
    def __init__(self, config: LanguageConfig):
        self._config = config

    def setup(self):
        self._detector = LanguageDetector(self._config.seed)
        self._detected = Metrics.counter("openwit", "language.detected")
        self._progress = ProgressLog("language")

    def finish_bundle(self):
        self._progress.log()

    def process(self, candidate):
        answer = self._detector.detect(candidate["caption"])
        self._detected.inc()
        reason = self._rejection(answer)
        if reason is not None:
            self._progress.update(failed=1)
            detail = "" if answer is None else f"{answer[0]} p={answer[1]:.2f}"
            yield tagged_failure(candidate, Stage.LANGUAGE, reason, detail)
            return
        self._progress.update(ok=1)
        language, probability = answer
        yield {**candidate, "language": language, "language_prob": round(probability, 4)}

    def _rejection(self, answer: tuple[str, float] | None) -> str | None:
        if answer is None:
            return Reason.LANGUAGE_UNDETECTABLE
        language, probability = answer
        if language not in self._config.languages:
            return Reason.LANGUAGE_NOT_WANTED
        if probability < self._config.min_probability:
            return Reason.LANGUAGE_UNCERTAIN
        return None


class FilterLanguage(beam.PTransform):
    """Candidates -> StageResult; survivors carry `language` and `language_prob`."""

    def __init__(self, config: LanguageConfig):
        super().__init__()
        self._config = config

    def expand(self, candidates):
        if not self._config.languages:
            kept = candidates | "Any language" >> beam.Map(
                lambda c: {**c, "language": UNDETERMINED, "language_prob": 0.0}
            )
            failed = candidates.pipeline | "No language failures" >> beam.Create([])
            return StageResult(kept, failed)
        result = candidates | "Detect language" >> beam.ParDo(
            FilterLanguageFn(self._config)
        ).with_outputs(FAILED, main=KEPT)
        return StageResult(result[KEPT], result[FAILED])
