"""Nothing untrusted is unpickled: checkpoints load with `weights_only=True`, and the report
reads a run's settings from JSON, never from its checkpoint."""

from __future__ import annotations

import json
import os
import pickle

import pytest

torch = pytest.importorskip("torch")

from openwit.model.train import load_checkpoint, random_states, restore_random_states  # noqa: E402
from openwit.pipeline.core.errors import ConfigError  # noqa: E402


class Payload:
    """A pickle that creates a file when it is loaded: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_checkpoint(path, marker):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model": Payload(str(marker))}, f)


def test_a_hostile_checkpoint_is_refused_without_running_it(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    hostile_checkpoint(str(path), marker)
    with pytest.raises(ConfigError, match="not a checkpoint that loads safely"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_random_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    states = random_states()
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    torch.save({"random": states}, tmp_path / "states.pt")
    loaded = torch.load(tmp_path / "states.pt", weights_only=True)
    restore_random_states(loaded["random"])
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def test_eval_of_a_hostile_checkpoint_is_one_line_and_runs_nothing(tmp_path, capsys):
    from openwit.pipeline.apps.cli import main

    run, marker = tmp_path / "run", tmp_path / "pwned"
    hostile_checkpoint(str(run / "checkpoints" / "latest.pt"), marker)
    (tmp_path / "shards").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--checkpoint", str(run), "--retrieval-shards", str(tmp_path / "shards")])
    assert exit_info.value.code == 2
    assert "not a checkpoint that loads safely" in capsys.readouterr().err
    assert not marker.exists()


def test_the_report_never_opens_the_checkpoint(tmp_path):
    from openwit.pipeline.apps.report import ReportConfig, write_report

    corpus, run, marker = tmp_path / "corpus", tmp_path / "run", tmp_path / "pwned"
    corpus.mkdir()
    run.mkdir()
    hostile_checkpoint(str(run / "checkpoints" / "latest.pt"), marker)
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1.0 / s, "lr": 0.001, "logit_scale": 14.3,
                    "samples_per_s": 100.0, "data_fraction": 0.1}) + "\n" for s in (1, 2, 3)))
    (run / "run.json").write_text(json.dumps({"train_config": {"batch_size": 32}}))
    page = open(write_report(ReportConfig(corpus=str(corpus), run=str(run)))).read()
    assert not marker.exists()
    assert "Loss vs samples seen: not available" not in page  # the batch came from run.json
