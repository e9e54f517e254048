"""The text stages as steps over batches of candidates, several steps to one Beam element.

Each text stage's work is a few microseconds per candidate; moving one candidate dict from one
Beam transform to the next costs about as much again (the DirectRunner's per-element bookkeeping,
windowing and output routing). So curation passes *batches* (lists of a few thousand candidate
dicts) between its transforms and runs the steps of one pass inside one DoFn, one step after
the other over the whole batch, each step handing its survivors to the next:

    pass 1:  parse (batches) -> RunSteps([normalise, match])
    pass 3:  read parts (batches) -> RunSteps([dedup_url, balance, language, name])

Failures stay one element per dropped candidate, tagged with their stage, so that every stage
still writes and counts its own failures. A stage is tested alone by running its step through
`RunSteps`, the same code that runs in production.
"""

from __future__ import annotations

import abc
import typing

import apache_beam as beam

from openwit.pipeline.core.records import KEPT

BATCH_SIZE = 2048


class Step(abc.ABC):
    """One text stage's work on a batch. `run` returns (survivors, failure dicts).

    `stage` names the failures' tagged output (None: the step never drops a candidate);
    `side_input` names the side input `run` receives (None: it receives None).
    """

    stage: str | None = None
    side_input: str | None = None

    def setup(self) -> None:
        """Per-worker resources (an automaton, a detector, metrics), built once."""

    @abc.abstractmethod
    def run(self, candidates: list[dict], side) -> tuple[list[dict], list[dict]]:
        """(survivors, failure dicts) of this batch; `side` is the named side input."""


class RunStepsFn(beam.DoFn):
    def __init__(self, steps: typing.Sequence[Step]):
        self._steps = tuple(steps)

    def setup(self):
        for step in self._steps:
            step.setup()

    def process(self, batch: list[dict], **side_inputs):
        for step in self._steps:
            batch, failures = step.run(batch, side_inputs.get(step.side_input))
            for failed in failures:
                yield beam.pvalue.TaggedOutput(step.stage, failed)
            if not batch:
                return
        yield batch


class StepsResult(typing.NamedTuple):
    kept: beam.PCollection  # batches (lists) of surviving candidates
    failed: dict  # stage -> PCollection of its failure dicts


class RunSteps(beam.PTransform):
    """Batches of candidates -> StepsResult; `side_inputs` maps a step's `side_input` name to
    a side-input view (`beam.pvalue.AsDict(...)`)."""

    def __init__(self, steps: typing.Sequence[Step], side_inputs: dict | None = None):
        super().__init__()
        self._steps = tuple(steps)
        self._side_inputs = dict(side_inputs or {})
        stages = [step.stage for step in self._steps if step.stage is not None]
        if len(set(stages)) != len(stages) or KEPT in stages:
            raise ValueError(f"steps need distinct stage names other than {KEPT!r}: {stages}")
        self._stages = stages

    def expand(self, batches):
        result = batches | "Run steps" >> beam.ParDo(
            RunStepsFn(self._steps), **self._side_inputs
        ).with_outputs(*self._stages, main=KEPT)
        return StepsResult(result[KEPT], {stage: result[stage] for stage in self._stages})


def unbatch(batches: beam.PCollection, label: str = "Unbatch") -> beam.PCollection:
    return batches | label >> beam.FlatMap(lambda batch: batch)
