"""The CLI's argument handling: user mistakes end with a message and exit code 2."""

import pytest

from openwit.pipeline.apps.cli import main
from openwit.pipeline.shards.summary import format_summary


@pytest.mark.parametrize("argv, message", [
    (["build", "--output", "out"], "--candidates is required"),
    (["build", "--candidates", "{tmp}/none-*.parquet", "--output", "out"], "matches no file"),
    (["build", "--candidates", "{tmp}/c.csv", "--output", "out", "--languges", "fr"],
     "unknown option(s): --languges"),
    (["build", "--candidates", "{tmp}/c.csv", "--output", "out", "--per-query-cap", "0"],
     "--per-query-cap must be at least 1"),
    (["build", "--candidates", "{tmp}/c.csv", "--output", "out", "--queries", "{tmp}/q.txt"],
     "does not exist"),
])
def test_user_errors_exit_with_a_message(tmp_path, capsys, argv, message):
    (tmp_path / "c.csv").write_text("url,caption\nhttp://a.test/x.jpg,x\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_flag_value_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--allow-private-hosts", "maybe"])
    assert "expected true/false" in capsys.readouterr().err


def test_summary_table():
    stats = {
        "input_rows": 10, "written": 6,
        "stages": [{"stage": "read", "in": 10, "kept": 9, "dropped": {"missing_url": 1}},
                   {"stage": "download", "in": 9, "kept": 6,
                    "dropped": {"http_404": 2, "timeout": 1}}],
        "shards": {"with_samples": 1, "tar_bytes": 2_000_000, "planned": 1, "reused": 0},
        "queries": {"matched": 3, "kept": 3, "written": 2},
    }
    text = format_summary(stats, "out")
    assert "http_404 2, timeout 1" in text
    assert "6 of 10 candidates written in 1 shards (2.0 MB) to out/shards" in text


def test_web_writes_the_world_and_exits_with_no_serve(tmp_path, capsys):
    assert main(["web", "--output", str(tmp_path), "--samples", "100", "--eval-per-class", "1",
                 "--no-serve"]) == 0
    assert (tmp_path / "candidates.parquet").exists() and (tmp_path / "queries.txt").exists()
    assert "127.0.0.1" in capsys.readouterr().out
