"""Keep captions in the wanted languages: langdetect's answers, seeded, computed in batches.

Each worker builds a `LanguageIdentifier` (pipeline/langid.py) in `setup()`: it gives exactly
langdetect's answer for the configured seed (the same language and probability, bit for bit,
tested against langdetect itself), but replays langdetect's random sampling for a whole batch
of captions in a compiled (numba) kernel, about 100 times faster than langdetect (numpy
replay where numba is missing: about 20 times). The DoFn collects captions and identifies
them `BATCH_SIZE` at a time.

Every caption gets the same answer on every worker, in any order, on rerun: langdetect re-seeds
per text, and so does the replay. The stage runs last among the text stages, on the candidates
balancing kept. Repeated captions (boilerplate alt texts) are answered from a per-worker cache.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.config import LanguageConfig
from pipeline.progress import ProgressLog
from pipeline.records import FAILED, KEPT, Reason, Stage, StageResult, failure

UNDETERMINED = "und"  # ISO 639-2 "undetermined": detection was not asked for
BATCH_SIZE = 2048


def _in_global_window(value) -> WindowedValue:
    # finish_bundle has no element to inherit a window from; curation runs in the global one.
    return WindowedValue(value, 0, [GlobalWindow()])


def language_verdict(config: LanguageConfig, answer: tuple[str, float] | None) -> str | None:
    """The reason to drop a caption with this answer, or None to keep it."""
    if answer is None:
        return Reason.LANGUAGE_UNDETECTABLE
    language, probability = answer
    if language not in config.languages:
        return Reason.LANGUAGE_NOT_WANTED
    if probability < config.min_probability:
        return Reason.LANGUAGE_UNCERTAIN
    return None


class FilterLanguageFn(beam.DoFn):
    def __init__(self, config: LanguageConfig, batch_size: int = BATCH_SIZE):
        self._config = config
        self._batch_size = batch_size

    def setup(self):
        from pipeline.langid import LanguageIdentifier

        self._detector = LanguageIdentifier(self._config.seed)
        self._detected = Metrics.counter("openwit", "language.detected")
        self._progress = ProgressLog("language")

    def start_bundle(self):
        self._waiting: list[dict] = []

    def process(self, candidate):
        self._waiting.append(candidate)
        if len(self._waiting) >= self._batch_size:
            yield from self._identify()

    def finish_bundle(self):
        for output in self._identify():
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, _in_global_window(output.value))
            else:
                yield _in_global_window(output)
        self._progress.log()

    def _identify(self):
        candidates, self._waiting = self._waiting, []
        if not candidates:
            return
        answers = self._detector.detect_many([c["caption"] for c in candidates])
        self._detected.inc(len(candidates))
        for candidate, answer in zip(candidates, answers):
            reason = language_verdict(self._config, answer)
            if reason is not None:
                self._progress.update(failed=1)
                detail = "" if answer is None else f"{answer[0]} p={answer[1]:.2f}"
                yield beam.pvalue.TaggedOutput(
                    FAILED, failure(candidate, Stage.LANGUAGE, reason, detail))
                continue
            self._progress.update(ok=1)
            language, probability = answer
            yield {**candidate, "language": language, "language_prob": round(probability, 4)}


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
