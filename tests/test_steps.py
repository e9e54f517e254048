"""Steps over batches (pipeline/text/steps.py): one DoFn running several stages does what the
stages do one after the other, failures tagged by stage."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from helpers import StepOnElements, beam_test_pipeline
from openwit.pipeline.text.balance import BalanceStep, balance_draw, keep_probability
from openwit.pipeline.text.config import BalanceConfig, MatchConfig, NormaliseConfig
from openwit.pipeline.text.match import MatchStep, QueryMatcher
from openwit.pipeline.text.normalise import NormaliseStep, normalise_caption
from openwit.pipeline.core.records import Reason, Stage, sample_key
from openwit.pipeline.text.steps import RunSteps, Step, unbatch


def candidate(index, caption):
    url = f"http://a.test/{index}.jpg"
    return {"key": sample_key(url, caption), "url": url, "caption": caption, "row": index}


CAPTIONS = ["a red circle", "  ", "cafÃ© circle", "x" * 90 + " circle", "a blue square",
            "nothing here", "red &amp; blue star", "star of stars", "square dance"]


@pytest.fixture
def queries(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("circle\nsquare\nstar\n")
    return str(path)


def expected_outcome(candidate, max_chars, matcher, counts, balance):
    """What normalise -> match -> balance do to one candidate, from the plain functions."""
    caption = normalise_caption(candidate["caption"])
    if not caption:
        return ("failed", Stage.NORMALISE, Reason.EMPTY_CAPTION)
    if len(caption) > max_chars:
        return ("failed", Stage.NORMALISE, Reason.CAPTION_TOO_LONG)
    ids = matcher.match_ids(caption)
    if not ids:
        return ("failed", Stage.MATCH, Reason.NO_QUERY_MATCH)
    probability = keep_probability([counts[i] for i in ids], balance.target)
    if probability < 1 and balance_draw(balance.seed, candidate["key"]) >= probability:
        return ("failed", Stage.BALANCE, Reason.BALANCED_OUT)
    return ("kept", caption, tuple(ids), probability)


def test_steps_in_one_dofn_equal_the_stages_one_after_the_other(queries):
    pool = [candidate(i, caption) for i, caption in enumerate(CAPTIONS * 20)]
    normalise, match = NormaliseConfig(max_caption_chars=60), MatchConfig(queries=queries)
    balance = BalanceConfig(per_query_cap=10, oversample=1.0)
    counts = np.array([60, 40, 20])  # circle, square, star: all above the cap
    matcher = QueryMatcher(["circle", "square", "star"])
    expected = [(c["key"], expected_outcome(c, 60, matcher, counts, balance)) for c in pool]
    assert {outcome[:3] for _, outcome in expected if outcome[0] == "failed"} == {
        ("failed", Stage.NORMALISE, Reason.EMPTY_CAPTION),
        ("failed", Stage.NORMALISE, Reason.CAPTION_TOO_LONG),
        ("failed", Stage.MATCH, Reason.NO_QUERY_MATCH),
        ("failed", Stage.BALANCE, Reason.BALANCED_OUT)}
    batches = [pool[start:start + 7] for start in range(0, len(pool), 7)]

    with beam_test_pipeline() as p:
        fused = p | "Batches" >> beam.Create(batches) | "Fused" >> RunSteps(
            [NormaliseStep(normalise), MatchStep(match), BalanceStep(balance)],
            side_inputs={"counts": beam.pvalue.AsSingleton(p | "Counts" >> beam.Create([counts]))})
        assert list(fused.failed) == [Stage.NORMALISE, Stage.MATCH, Stage.BALANCE]
        kept = unbatch(fused.kept) | "Kept" >> beam.Map(
            lambda c: (c["key"], ("kept", c["caption"], tuple(c["query_ids"]),
                                  c["keep_probability"])))
        failed = (list(fused.failed.values()) | beam.Flatten()
                  | "Failed" >> beam.Map(lambda f: (f["key"], ("failed", f["stage"], f["reason"]))))
        assert_that((kept, failed) | "Outcomes" >> beam.Flatten(), equal_to(expected))
        # The same candidates through each step alone, chained.
        single = p | "Pool" >> beam.Create(pool)
        balanced = (single | "Normalise" >> StepOnElements(NormaliseStep(normalise))).kept \
            | "Match" >> StepOnElements(MatchStep(match))
        balanced = balanced.kept | "Balance" >> StepOnElements(BalanceStep(balance), {
            "counts": beam.pvalue.AsSingleton(p | "Counts again" >> beam.Create([counts]))})
        assert_that(balanced.kept | "Single kept" >> beam.Map(lambda c: c["key"]),
                    equal_to([key for key, outcome in expected if outcome[0] == "kept"]),
                    label="single")


def test_a_batch_emptied_by_a_step_stops_there():
    class DropAll(Step):
        stage = "drop"

        def run(self, candidates, side):
            return [], [{"key": c["key"]} for c in candidates]

    class MustNotRun(Step):
        stage = "later"

        def run(self, candidates, side):
            raise AssertionError("ran on an empty batch")

    with beam_test_pipeline() as p:
        result = p | beam.Create([[candidate(1, "a")], [candidate(2, "b")]]) | RunSteps(
            [DropAll(), MustNotRun()])
        assert_that(result.kept, equal_to([]), label="kept")
        assert_that(result.failed["drop"] | beam.Map(lambda f: f["key"]),
                    equal_to([candidate(1, "a")["key"], candidate(2, "b")["key"]]),
                    label="dropped")


def test_stage_names_must_be_distinct():
    with pytest.raises(ValueError):
        RunSteps([NormaliseStep(NormaliseConfig()), NormaliseStep(NormaliseConfig())])
