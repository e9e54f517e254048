"""Stage 6: keep captions in the wanted languages: langdetect's answers, seeded, computed in batches.

Each worker builds a `LanguageIdentifier` (text/langid.py) in `setup()`: it gives exactly
langdetect's answer for the configured seed (the same language and probability, bit for bit,
tested against langdetect itself), but replays langdetect's random sampling for a whole batch
of captions in a compiled (numba) kernel, or with numpy where numba is missing; both are far
faster than langdetect itself (benchmarks/bench_language.py). The step identifies a batch of captions
`BATCH_SIZE` at a time.

Every caption gets the same answer on every worker, in any order, on rerun: langdetect re-seeds
per text, and so does the replay. The stage runs last among the text stages, on the candidates
balancing kept. Repeated captions (boilerplate alt texts) are answered from a per-worker cache.
"""

from __future__ import annotations

from apache_beam.metrics import Metrics

from openwit.pipeline.text.config import LanguageConfig
from openwit.pipeline.core.progress import ProgressLog
from openwit.pipeline.text.langid import LanguageIdentifier
from openwit.pipeline.core.records import Reason, Stage, failure
from openwit.pipeline.text.steps import Step

UNDETERMINED = "und"  # ISO 639-2 "undetermined": detection was not asked for
BATCH_SIZE = 2048


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


class LanguageStep(Step):
    """Survivors carry `language` and `language_prob` (`und` and 0 when any language goes)."""

    stage = Stage.LANGUAGE

    def __init__(self, config: LanguageConfig):
        self._config = config

    def setup(self):
        self._detector = LanguageIdentifier(self._config.seed)
        self._detected = Metrics.counter("openwit", "language.detected")
        self._progress = ProgressLog("language")

    def run(self, candidates, side):
        if not self._config.languages:
            return [{**c, "language": UNDETERMINED, "language_prob": 0.0}
                    for c in candidates], []
        kept, failures = [], []
        # detect_many is fastest on a few thousand captions at a time.
        for start in range(0, len(candidates), BATCH_SIZE):
            chunk = candidates[start:start + BATCH_SIZE]
            answers = self._detector.detect_many([c["caption"] for c in chunk])
            for candidate, answer in zip(chunk, answers):
                reason = language_verdict(self._config, answer)
                if reason is None:
                    language, probability = answer
                    kept.append({**candidate, "language": language,
                                 "language_prob": round(probability, 4)})
                else:
                    detail = "" if answer is None else f"{answer[0]} p={answer[1]:.2f}"
                    failures.append(failure(candidate, Stage.LANGUAGE, reason, detail))
        self._detected.inc(len(candidates))
        self._progress.update(ok=len(kept), failed=len(failures))
        return kept, failures
