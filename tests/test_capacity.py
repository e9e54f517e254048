"""The capacity plan (infra/capacity.py, infra/CAPACITY.md) cannot drift: the doc's tables are
what the script prints, every input names a source that exists, the inputs read from the code
equal the code, and the arithmetic holds on cases checked by hand."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import io
import pathlib
import re
import sys
from contextlib import redirect_stdout

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "infra" / "capacity.py"
DOC = ROOT / "infra" / "CAPACITY.md"


def load_capacity():
    # infra/ is not a package: load the script by path. A dataclass module must be in
    # sys.modules while it is defined.
    spec = importlib.util.spec_from_file_location("openwit_capacity_plan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


capacity = load_capacity()


def doc_block(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- capacity.py {name}: begin -->\n(.*?)<!-- capacity.py {name}: end -->",
                      text, re.S)
    assert match, f"CAPACITY.md has no '{name}' block"
    return match.group(1)


def headings(path: pathlib.Path) -> set[str]:
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def test_the_doc_holds_what_the_script_prints():
    defaults = capacity.Inputs()
    assert doc_block("plan") == capacity.render_plan(defaults)
    assert doc_block("sources") == capacity.render_sources(defaults)
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert capacity.main([]) == 0
    assert printed.getvalue() == (capacity.render_plan(defaults) + "\n"
                                  + capacity.render_sources(defaults))


def test_every_input_names_a_source_that_exists():
    documents = {capacity.RESULTS: headings(ROOT / capacity.RESULTS),
                 capacity.CAPACITY: {h.lstrip("#").strip() for h in headings(DOC)}}
    for field in dataclasses.fields(capacity.Inputs):
        source = capacity.source_of(field)
        assert source.kind in (capacity.MEASURED, capacity.CODE, capacity.ASSUMPTION), field.name
        if source.kind == capacity.CODE:
            assert (ROOT / source.document).is_file(), field.name
            continue
        assert source.note, f"{field.name} gives no figure or reason"
        if source.kind == capacity.MEASURED:
            assert source.document == capacity.RESULTS, field.name
        if source.where:
            assert source.where in documents[source.document], (
                f"{field.name} cites {source.where!r}, not a heading of {source.document}")


def constant_in(path: pathlib.Path, name: str):
    """The value of NAME (module level) or Class.field (a class-level default) in a source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    owner, _, attribute = name.rpartition(".")
    scopes = [tree] if not owner else [
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == owner]
    for scope in scopes:
        for node in scope.body:
            targets = ([node.target] if isinstance(node, ast.AnnAssign)
                       else node.targets if isinstance(node, ast.Assign) else [])
            for target in targets:
                if isinstance(target, ast.Name) and target.id == (attribute or name):
                    expression = ast.Expression(node.value)
                    return eval(compile(expression, str(path), "eval"), {"__builtins__": {}})
    raise AssertionError(f"{name} not found in {path}")


def test_inputs_read_from_the_code_equal_the_code():
    for field in dataclasses.fields(capacity.Inputs):
        source = capacity.source_of(field)
        if source.kind == capacity.CODE:
            assert constant_in(ROOT / source.document, source.where) == field.default, field.name


def test_the_script_needs_only_the_standard_library():
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def text_row(stages):
    return next(s for s in stages if s.name.startswith("read, normalise"))


def test_text_stages_cost_what_the_curate_benchmark_measured():
    defaults = capacity.Inputs()
    # 2e9 candidates x (81.8 - 25.0) CPU s per 1e6 candidates, in hours.
    assert text_row(capacity.stages(defaults)).core_hours == pytest.approx(2e9 * 56.8e-6 / 3600)
    # Language on what balancing kept, at 25.0 CPU s per 960,909 captions.
    flow = capacity.flow(defaults)
    language = next(s for s in capacity.stages(defaults) if s.name == "language")
    assert language.core_hours == pytest.approx(flow.balanced * 25.0 / 960_909 / 3600)


def test_doubling_the_pool_doubles_the_text_stages_and_not_the_corpus():
    base = capacity.Inputs()
    doubled = dataclasses.replace(base, pool_candidates=2 * base.pool_candidates)
    before, after = capacity.stages(base), capacity.stages(doubled)
    assert text_row(after).core_hours == pytest.approx(2 * text_row(before).core_hours)
    assert text_row(after).shuffled == pytest.approx(2 * text_row(before).shuffled)
    # Balancing keeps half as much, so everything after it stays the same ...
    keeps = [capacity.flow(inputs).balance_keep for inputs in (base, doubled)]
    assert keeps[1] == pytest.approx(keeps[0] / 2)
    for old, new in zip(before[1:], after[1:]):
        if not new.name.startswith("pass 2"):
            assert new.core_hours == pytest.approx(old.core_hours), new.name
    # ... except the per-part rebuild of the losers: parts and losers both double.
    rebuild = [s.core_hours for s in (before[2], after[2])]
    assert rebuild[1] == pytest.approx(4 * rebuild[0])


def test_the_corpus_comes_out_at_the_size_asked_for():
    for pool, corpus in ((2e9, 4e8), (5e9, 1e9), (1e8, 2e7)):
        flow = capacity.flow(dataclasses.replace(capacity.Inputs(), pool_candidates=pool,
                                                 corpus_pairs=corpus))
        assert flow.written == pytest.approx(corpus)
        # By hand: written = pool x every stage's share, balancing's included.
        i = capacity.Inputs()
        shares = (i.read_keep * i.normalise_keep * i.match_keep * (1 - i.url_duplicate_share)
                  * flow.balance_keep * i.language_keep * i.fetch_success
                  * (1 - i.identical_image_share) * (1 - i.near_duplicate_share)
                  * (1 - i.over_cap_share))
        assert pool * shares == pytest.approx(corpus)


def test_a_shards_group_grows_linearly_with_samples_per_shard():
    base = capacity.Inputs()
    groups = [capacity.memory(dataclasses.replace(base, samples_per_shard=n)).shard_group
              for n in (10_000, 100_000)]
    assert groups[1] == pytest.approx(10 * groups[0])


def test_training_hours_follow_from_samples_and_flops():
    i = capacity.Inputs()
    expected = 12.8e9 * 43.4e9 / (312e12 * 0.30) / 3600
    assert capacity.totals(i).gpu_hours == pytest.approx(expected)


def test_flags_change_the_inputs_and_a_misspelt_one_stops():
    chosen = capacity.inputs_from(capacity.parse_args(
        ["--pool", "4e9", "--corpus", "5e8", "--set", "fetch_success=0.5"]))
    assert (chosen.pool_candidates, chosen.corpus_pairs, chosen.fetch_success) == (4e9, 5e8, 0.5)
    with pytest.raises(SystemExit):
        capacity.inputs_from(capacity.parse_args(["--set", "fetch_sucess=0.5"]))
