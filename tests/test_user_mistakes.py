"""Every command answers a user's mistake (a bad value, a missing file, a wrong type, an
unknown flag) with one line naming the flag or the path, `openwit CMD: error: ...`, and exit
status 2: never a traceback."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openwit.pipeline.apps.cli import main
from openwit.pipeline.core.layout import CURATED_QUERY_COUNTS_SCHEMA


@pytest.fixture
def inputs(tmp_path):
    """A candidate list, a query list, a curated folder's summary files, an empty folder."""
    (tmp_path / "c.csv").write_text("url,caption\nhttp://a.test/x.jpg,a red circle\n")
    (tmp_path / "q.txt").write_text("circle\n")
    curated = tmp_path / "curated"
    curated.mkdir()
    (curated / "stats.json").write_text(json.dumps(
        {"stages": [], "balance": {"per_query_cap": 5, "oversample": 1.0, "target": 5}}))
    pq.write_table(pa.Table.from_pylist([], schema=CURATED_QUERY_COUNTS_SCHEMA),
                   curated / "query_counts.parquet")
    (tmp_path / "empty").mkdir()
    return tmp_path


CURATE = ["curate", "--candidates", "{tmp}/c.csv", "--output", "{tmp}/out"]
DOWNLOAD = ["download", "--curated", "{tmp}/curated", "--output", "{tmp}/out"]
BUILD = ["build", "--candidates", "{tmp}/c.csv", "--output", "{tmp}/out"]
QUERIES = ["queries", "--wordnet", "none", "--output", "{tmp}/out"]
TRAIN = ["train", "--shards", "{tmp}/empty", "--output", "{tmp}/run"]
EVAL = ["eval", "--checkpoint", "{tmp}/run.pt", "--retrieval-shards", "{tmp}/empty"]
DEMO = ["demo", "--output", "{tmp}/demo", "--no-train"]
WEB = ["web", "--output", "{tmp}/web", "--no-serve"]
REPORT = ["report", "{tmp}/empty"]

MISTAKES = [
    # (command line, what the error line must say)
    (CURATE + ["--per-query-cap", "0"], "--per-query-cap must be at least 1"),
    (CURATE + ["--min-language-prob", "2"], "--min-language-prob must be in [0, 1]"),
    (["curate", "--candidates", "{tmp}/none.csv", "--output", "{tmp}/out"],
     "--candidates '{tmp}/none.csv' matches no file"),
    (CURATE + ["--queries", "{tmp}/none.txt"], "--queries '{tmp}/none.txt' does not exist"),
    (CURATE + ["--oversample", "lots"], "argument --oversample: invalid float value: 'lots'"),
    (CURATE + ["--match-mode", "fuzzy"], "argument --match-mode: invalid choice: 'fuzzy'"),
    (CURATE + ["--languges", "fr"], "unknown option(s): --languges"),
    (["curate", "--output", "{tmp}/out"], "--candidates is required"),

    (["candidates", "--wat", "{tmp}/none.wat.gz", "--output", "{tmp}/out"],
     "--wat '{tmp}/none.wat.gz' matches no file"),
    (["candidates", "--output", "{tmp}/out"], "one of the arguments --wat --warc is required"),
    (["candidates", "--wat", "{tmp}/c.csv", "--warc", "{tmp}/c.csv"],
     "argument --warc: not allowed with argument --wat"),
    (["candidates", "--wat", "{tmp}/c.csv", "--max-record-mb", "0"],
     "--max-record-mb must be at least 1"),
    (["build", "--candidates", "{tmp}/c.csv", "--wat", "{tmp}/c.csv", "--output", "{tmp}/out"],
     "give --candidates or crawl files (--wat / --warc), not both"),

    (DOWNLOAD + ["--download-threads", "0"], "--download-threads must be at least 1"),
    (["download", "--curated", "{tmp}/empty", "--output", "{tmp}/out"],
     "--curated '{tmp}/empty' holds no stats.json"),
    (DOWNLOAD + ["--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
    (DOWNLOAD + ["--treads", "3"], "unknown option(s): --treads"),
    (["download", "--output", "{tmp}/out"], "--curated is required"),
    (DOWNLOAD, "--curated '{tmp}/curated' holds no curated.parquet/*.parquet"),

    (BUILD + ["--max-aspect-ratio", "0.5"], "--max-aspect-ratio must be at least 1"),
    (["build", "--candidates", "{tmp}/none-*.parquet", "--output", "{tmp}/out"],
     "matches no file"),
    (BUILD + ["--image-size", "big"], "argument --image-size: invalid int value: 'big'"),
    (BUILD + ["--allow-private-hosts", "maybe"], "expected true/false, got 'maybe'"),
    (BUILD + ["--allow-network", "127.0.0.1/33"], "--allow-network: '127.0.0.1/33' is not a"),
    (BUILD + ["--runer", "DirectRunner"], "unknown option(s): --runer"),
    (BUILD + ["--max-per-host", "0"], "--max-per-host must be at least 1"),
    (BUILD + ["--host-cooldown", "-1"], "--host-cooldown must be a number of seconds"),
    (BUILD + ["--cooldown-after", "0"], "--cooldown-after must be at least 1"),
    (DOWNLOAD + ["--max-host-cooldowns", "-1"], "--max-host-cooldowns must be at least 0"),
    (BUILD + ["--robots-txt", "perhaps"], "expected true/false, got 'perhaps'"),
    (["build", "--candidates", "{tmp}/c.csv"], "--output is required"),

    (QUERIES + ["--min-unigram-count", "0"], "--min-unigram-count must be at least 1"),
    (QUERIES + ["--extra-queries", "{tmp}/none.txt"], "'{tmp}/none.txt' matches no file"),
    (["queries", "--wordnet", "{tmp}/empty", "--output", "{tmp}/out"],
     "--wordnet '{tmp}/empty' lacks"),
    (QUERIES + ["--min-bigram-pmi", "high"], "argument --min-bigram-pmi: invalid float value"),
    (QUERIES + ["--wordnet-lemma", "head"], "unknown option(s): --wordnet-lemma"),

    (TRAIN + ["--batch-size", "0"], "--batch-size must be at least 1"),
    (TRAIN, "no shards match '{tmp}/empty'"),
    (TRAIN + ["--tokenizer", "{tmp}/none.json"], "--tokenizer '{tmp}/none.json' does not exist"),
    (TRAIN + ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (TRAIN + ["--model", "huge"], "argument --model: invalid choice: 'huge'"),
    (TRAIN + ["--steps", "3"], "unknown option(s): --steps"),

    (EVAL, "--checkpoint: no checkpoint at {tmp}/run.pt"),
    (["eval", "--checkpoint", "{tmp}/run.pt"], "nothing to evaluate"),
    (EVAL + ["--dataset", "{tmp}/missing"], "--dataset '{tmp}/missing' is not a folder"),
    (EVAL + ["--retrieval-samples", "0"], "--retrieval-samples and --batch-size must be"),
    (EVAL + ["--batch-size", "many"], "argument --batch-size: invalid int value: 'many'"),
    (EVAL + ["--templatez", "single"], "unknown option(s): --templatez"),

    (DEMO + ["--per-query-cap", "0"], "--per-query-cap must be at least 1"),
    (DEMO + ["--port", "70000"], "--port must be in [0, 65535]"),
    (["demo", "--output", "/proc/openwit-demo", "--port", "0", "--samples", "100"],
     "cannot write the mini-web to '/proc/openwit-demo/web'"),
    (DEMO + ["--seed", "one"], "argument --seed: invalid int value: 'one'"),
    (DEMO + ["--quik"], "unknown option(s): --quik"),

    (WEB + ["--samples", "10"], "--samples must be at least 64"),
    (["web", "--output", "/proc/openwit-web", "--no-serve", "--samples", "100"],
     "cannot write the mini-web to '/proc/openwit-web'"),
    (WEB + ["--port", "p"], "argument --port: invalid int value: 'p'"),
    (WEB + ["--hosts", "0"], "--hosts must be in [1, 254]"),
    (WEB + ["--sampels", "3"], "unknown option(s): --sampels"),

    (BUILD + ["--near-duplicate-distance", "-1"], "--near-duplicate-distance must be in [0, 128)"),
    (BUILD + ["--hash-size", "64"], "the hash size must be in [4, 32]"),
    (BUILD + ["--hash-kind", "md5"], "argument --hash-kind: invalid choice: 'md5'"),
    (BUILD + ["--hash-views", "0"], "the number of hash views must be in [1, 21]"),
    (BUILD + ["--near-duplicate-crops", "maybe"], "--near-duplicate-crops"),
    (BUILD + ["--near-duplicate-colour-step", "-1"],
     "--near-duplicate-colour-step must be in [0, 128]"),
    # An output folder under a file: one line at launch, not a worker's traceback.
    (["build", "--candidates", "{tmp}/c.csv", "--output", "{tmp}/q.txt/out"],
     "cannot write to '{tmp}/q.txt/out'"),
    (BUILD + ["--exclude-images", "{tmp}/nowhere"],
     "--exclude-images: '{tmp}/nowhere' is neither a file nor a folder"),
    (DOWNLOAD + ["--hot-bucket", "1"], "--hot-bucket must be at least 2"),
    (BUILD + ["--eval-distance", "200"], "--eval-distance must be in [0, 128)"),

    (["hashes", "{tmp}/nowhere", "--output", "{tmp}/h.json"],
     "'{tmp}/nowhere' is neither a file nor a folder"),
    (["hashes", "{tmp}/empty", "--output", "{tmp}/h.json", "--hash-size", "3"],
     "the hash size must be in [4, 32]"),
    (["hashes", "{tmp}/empty", "--output", "{tmp}/h.json", "--hash-views", "40"],
     "the number of hash views must be in [1, 21]"),
    (["hashes", "{tmp}/c.csv", "--output", "{tmp}/h.json"],
     "is not an image, a .tar shard or a hash list"),
    (["hashes", "{tmp}/empty"], "the following arguments are required: --output"),
    (["hashes", "{tmp}/empty", "--output", "{tmp}/h.json", "--hash-sise", "8"],
     "unknown option(s): --hash-sise"),

    (["report", "{tmp}/nowhere"], "corpus folder '{tmp}/nowhere' does not exist"),
    (REPORT + ["--run", "{tmp}/no-run"], "--run '{tmp}/no-run' does not exist"),
    (REPORT + ["--rnu", "{tmp}"], "unknown option(s): --rnu"),
]


@pytest.mark.parametrize("argv, message", MISTAKES,
                         ids=[f"{argv[0]}: {message[:40]}" for argv, message in MISTAKES])
def test_a_mistake_is_one_line_and_exit_status_2(inputs, capsys, argv, message):
    argv = [arg.replace("{tmp}", str(inputs)) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"openwit {argv[0]}: error: "), err
    assert message.replace("{tmp}", str(inputs)) in last, err


def test_every_command_has_its_mistakes_tested():
    from openwit.pipeline.apps.cli import COMMANDS

    tested = {argv[0] for argv, _ in MISTAKES}
    assert tested == {command.name for command in COMMANDS}


@pytest.mark.parametrize("command", ["candidates", "curate", "download", "build", "hashes",
                                     "queries", "train", "eval", "demo", "web", "report"])
def test_help_lists_the_commands_own_flags(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    own = {"candidates": ["--wat", "--warc", "--max-record-mb", "wat.paths.gz"],
           "curate": ["--candidates", "--languages", "--oversample"],
           "download": ["--curated", "--download-threads", "--image-size"],
           "build": ["--candidates", "--wat", "--languages", "--download-threads",
                     "--exclude-images",
                     "--near-duplicate-distance"],
           "hashes": ["--output", "--hash-kind", "--hash-size", "--hash-views"],
           "queries": ["--wikipedia-dump", "--min-bigram-pmi"],
           "train": ["--shards", "--batch-size"], "eval": ["--checkpoint", "--templates"],
           "demo": ["--quick", "--ablation"], "web": ["--no-serve"], "report": ["--run"]}
    foreign = {"candidates": ["--candidates", "--languages"],
               "curate": ["--download-threads", "--curated"], "download": ["--languages",
                                                                          "--candidates"],
               "queries": ["--candidates"], "train": ["--candidates"],
               "web": ["--candidates"], "report": ["--candidates"]}
    for flag in own[command]:
        assert flag in out, (command, flag)
    for flag in foreign.get(command, []):
        assert flag not in out, (command, flag)
