"""Matching modes, MetaCLIP balancing and `openwit curate` as a whole (no network needed)."""

import collections
import json
import random

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from helpers import StepOnElements, assert_accounted, beam_test_pipeline, find_duplicate_urls
from openwit.pipeline.text.balance import BalanceStep, CountQueryMatches, balance_draw, keep_probability
from openwit.pipeline.images.cap import ExactCap, cap_priority
from openwit.pipeline.apps.cli import main
from openwit.pipeline.images.config import CapConfig
from openwit.pipeline.text.config import BalanceConfig
from openwit.pipeline.text.url_dedup import DropDuplicateUrlsStep, FindDuplicateUrls
from openwit.pipeline.text.match import QueryMatcher, metaclip_reference_match, metaclip_spacing
from openwit.pipeline.text.normalise import normalise_caption
from openwit.pipeline.core.records import Reason, Stage, failure, sample_key, stable_hash64


def candidate(url, caption, query_ids=(), row=None):
    return {"key": sample_key(url, caption), "url": url, "caption": caption,
            "query_ids": list(query_ids),
            "row": stable_hash64(url, caption) >> 1 if row is None else row}


# --- MetaCLIP matching -----------------------------------------------------------------------

def test_metaclip_spacing_is_metaclips():
    assert metaclip_spacing("a dog,\tcat.") == " a dog ,  cat .  "
    assert metaclip_spacing("") == "  "


ENTRIES = ["dog", "Dog", "hot dog", "dog", "St. Louis", "c++", "new york", "a", "", "b`c",
           "dog's", "über", " spaced", "x:y", "?", "."]


@pytest.mark.parametrize("text, expected", [
    ("a dog", [0, 3, 7]),
    ("Dog.", [1, 8, 15]),  # "." is wrapped in spaces; the empty entry matches the double space
    ("a dog's hot dog", [0, 2, 3, 7, 10]),
    ("dogs", []),
    ("St. Louis", [8, 15]),  # entry 4 keeps its "." unwrapped, the text is wrapped: no match
    ("learn c++ now", [5]),
    ("New York", []),  # case-sensitive
    ("who? dog:cat", [0, 3, 8, 14]),
])
def test_metaclip_mode_examples(text, expected):
    matcher = QueryMatcher(ENTRIES, mode="metaclip")
    assert matcher.match_ids(text) == metaclip_reference_match(text, ENTRIES) == expected


def test_metaclip_mode_equals_the_reference_loop_on_random_text():
    rng = random.Random(7)
    words = ["dog", "Dog", "cat", "hot", "new", "york", "a", "the", "c++", "x", "y", "über",
             "St", "Louis", "s"]
    puncts = [",", ".", ";", ":", "?", "!", "`", "'", "(", ")", "-", "\t", "\n", "  ", " "]
    entries = list(ENTRIES)
    for _ in range(300):
        entries.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))))
        entries.append(rng.choice(words) + rng.choice(puncts) + rng.choice(words))
    matcher = QueryMatcher(entries, mode="metaclip")
    for _ in range(2000):
        text = "".join(rng.choice(words) + rng.choice(puncts) for _ in range(rng.randint(0, 12)))
        assert matcher.match_ids(text) == metaclip_reference_match(text, entries), repr(text)


def word_mode_reference(text: str, queries: list[str]) -> list[int]:
    """The documented rule, by brute force: an occurrence counts unless a word character on
    either side continues a word character of the query."""
    def is_word(ch):
        return ch.isalnum() or ch == "_"

    haystack, found = text.casefold(), []
    for query_id, query in enumerate(queries):
        needle = query.casefold()
        start = haystack.find(needle)
        while needle.strip() and start >= 0:
            end = start + len(needle) - 1
            if not (start > 0 and is_word(haystack[start - 1]) and is_word(haystack[start])) \
                    and not (end < len(haystack) - 1 and is_word(haystack[end + 1])
                             and is_word(haystack[end])):
                found.append(query_id)
                break
            start = haystack.find(needle, start + 1)
    return found


def test_word_mode_equals_the_documented_rule_on_random_text():
    rng = random.Random(11)
    pieces = ["dog", "Dog", "dogs", "hot", "HOT", "c++", "c", "x_y", "_", "über", "Über", "ß",
              "ss", "7", "42", "日本", "a", "an", "cafe\u0301", "l'été"]
    glue = [" ", "  ", ",", ".", "'", "-", "(", ")", "+", "", "_", "\t", "é"]
    queries = sorted({rng.choice(pieces) + rng.choice(glue) * rng.randint(0, 1)
                      + rng.choice(pieces) * rng.randint(0, 1) for _ in range(400)})
    queries += ["dog", "hot dog", "c++", "(dog)", "+", "'s"]
    matcher = QueryMatcher(queries)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) + rng.choice(glue) for _ in range(rng.randint(0, 10)))
        assert matcher.match_ids(text) == word_mode_reference(text, queries), repr(text)


def test_word_mode_reports_ids_of_every_query_sharing_a_needle():
    matcher = QueryMatcher(["US", "us", "bus"])
    assert matcher.match_ids("Made in the US") == [0, 1]
    assert matcher.match("a bus") == ["bus"]
    with pytest.raises(ValueError):
        QueryMatcher(["x"], mode="fuzzy")


def test_metaclip_json_table_keeps_entries_exactly(tmp_path):
    from openwit.queries.table import load_query_strings

    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(["dog", " dog", "dog", "Café"]))
    assert load_query_strings(str(path), exact=True) == ["dog", " dog", "dog", "Café"]
    assert load_query_strings(str(path)) == ["dog", "Café"]


# --- balancing -------------------------------------------------------------------------------

def test_keep_probability_is_metaclips_formula():
    assert keep_probability([], 10) == 1.0
    assert keep_probability([5, 1000], 10) == 1.0  # one query under the target keeps it
    assert keep_probability([10], 10) == 1.0
    assert keep_probability([100], 10) == pytest.approx(0.1)
    assert keep_probability([100, 40], 10) == pytest.approx(1 - 0.9 * 0.75)


def test_balance_draw_is_deterministic_uniform_and_seeded():
    draws = [balance_draw(0, f"{i:016x}") for i in range(20000)]
    assert draws == [balance_draw(0, f"{i:016x}") for i in range(20000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.01
    assert draws[:50] != [balance_draw(1, f"{i:016x}") for i in range(50)]


def nonzero_counts(vector):
    return [(query_id, int(vector[query_id])) for query_id in range(len(vector))
            if vector[query_id]]


def test_count_query_matches_equals_a_direct_count():
    rng = random.Random(1)
    inputs = [candidate(f"http://a.test/{i}", f"c{i}", sorted(rng.sample(range(50), 3)))
              for i in range(500)]
    expected = collections.Counter(q for c in inputs for q in c["query_ids"])
    with beam_test_pipeline() as p:
        batches = [inputs[start:start + 64] for start in range(0, len(inputs), 64)]
        batched = p | "Batches" >> beam.Create(batches) | "Batched" >> CountQueryMatches()
        assert_that(batched | "Pairs" >> beam.FlatMap(nonzero_counts),
                    equal_to(list(expected.items())), label="batched")


def test_count_in_parts_skips_url_losers_and_equals_a_direct_count(tmp_path):
    from openwit.pipeline.text.balance import CountQueryMatchesInParts
    from openwit.pipeline.core.layout import MATCHED_SCHEMA
    from openwit.pipeline.text.parts import WriteParquetParts

    rng = random.Random(3)
    rows = [candidate(f"http://a.test/{i}", f"c{i}", sorted(rng.sample(range(40), 3)), row=i)
            for i in range(900)]
    losers = [(i, "0" * 16) for i in range(0, 900, 7)]
    expected = collections.Counter(q for c in rows if c["row"] % 7 for q in c["query_ids"])
    with beam_test_pipeline() as p:
        paths = (p | "rows" >> beam.Create(rows)
                 | WriteParquetParts(str(tmp_path), "matched", MATCHED_SCHEMA, rows_per_part=100))
        counts = paths | CountQueryMatchesInParts(p | "losers" >> beam.Create(losers))
        assert_that(counts | beam.FlatMap(nonzero_counts), equal_to(list(expected.items())))
    assert len(list(tmp_path.glob("matched-*.parquet"))) >= 9


def zipf_pool(n=4000):
    """Query 0 in every caption, query 1 in a third, query 2 in every hundredth."""
    out = []
    for i in range(n):
        ids = [0] + ([1] if i % 3 == 0 else []) + ([2] if i % 100 == 0 else [])
        out.append(candidate(f"http://a.test/{i}.jpg", f"caption {i}", ids))
    return out


def test_balance_keeps_what_the_formula_and_the_seeded_draw_say():
    pool = zipf_pool()
    config = BalanceConfig(per_query_cap=200, oversample=1.0, seed=5)
    counts = collections.Counter(q for c in pool for q in c["query_ids"])

    def expected_keys():
        kept = []
        for c in pool:
            p = keep_probability([counts[q] for q in c["query_ids"]], config.target)
            if balance_draw(config.seed, c["key"]) < p:
                kept.append(c["key"])
        return kept

    with beam_test_pipeline() as p:
        candidates = p | beam.Create(pool)
        matches = candidates | beam.Map(lambda c: [c]) | CountQueryMatches()
        result = candidates | StepOnElements(BalanceStep(config), {
            "counts": beam.pvalue.AsSingleton(matches)})
        assert_that(result.kept | beam.Map(lambda c: c["key"]), equal_to(expected_keys()),
                    label="kept")
        assert_that(result.failed | beam.Map(lambda f: (f["stage"], f["reason"]))
                    | beam.Distinct(), equal_to([(Stage.BALANCE, Reason.BALANCED_OUT)]),
                    label="failed")
    kept = set(expected_keys())
    per_query = collections.Counter(q for c in pool if c["key"] in kept for q in c["query_ids"])
    assert per_query[2] == counts[2]  # a tail query keeps all its candidates
    # query 0 (4,000 matches) keeps about the target plus what rarer queries carry along
    assert 200 + per_query[2] * 0.5 < per_query[0] < 200 + 1334 * 0.2 + per_query[2] + 60


def test_balance_over_samples_by_the_factor():
    pool = [candidate(f"http://a.test/{i}.jpg", f"c {i}", [0]) for i in range(20000)]
    counts = {0: len(pool)}
    for oversample in (1.0, 1.5):
        config = BalanceConfig(per_query_cap=1000, oversample=oversample, seed=0)
        kept = sum(balance_draw(0, c["key"]) < keep_probability([counts[0]], config.target)
                   for c in pool)
        # binomial(20000, target/20000): the standard deviation is about 30
        assert abs(kept - config.target) < 150, (oversample, kept)


# --- URL dedup in two passes -----------------------------------------------------------------

def test_find_and_drop_duplicate_urls():
    same = [candidate("http://a.test/x.jpg", f"caption {i}", [i]) for i in range(4)]
    same.append(candidate("HTTP://A.TEST/x.jpg#top", "another spelling", [9]))
    other = candidate("http://a.test/y.jpg", "other", [7], row=5)
    again = {**other, "row": 3}  # the same row listed twice: one copy is a duplicate
    winner = min(same, key=lambda c: c["key"])
    with beam_test_pipeline() as p:
        candidates = p | beam.Create([*same, other, again])
        duplicates = find_duplicate_urls(candidates)
        assert_that(duplicates, equal_to(
            [(c["row"], winner["key"]) for c in same if c is not winner]
            + [(5, other["key"])]), label="duplicates")
        result = candidates | StepOnElements(DropDuplicateUrlsStep(),
                                             {"losers": beam.pvalue.AsDict(duplicates)})
        assert_that(result.failed | beam.Map(lambda f: (f["reason"], f["detail"])),
                    equal_to([(Reason.DUPLICATE_URL, f"same URL as {winner['key']}")] * 4
                             + [(Reason.DUPLICATE_URL, f"same URL as {other['key']}")]),
                    label="failed")
        assert_that(result.kept | beam.Map(lambda c: (c["key"], c["row"])),
                    equal_to([(winner["key"], winner["row"]), (other["key"], 3)]), label="kept")


def test_find_duplicate_urls_over_many_buckets():
    rng = random.Random(2)
    pool = [candidate(f"http://h{rng.randrange(300)}.test/{rng.randrange(3)}.jpg", f"c {i}")
            for i in range(3000)]
    by_url = collections.defaultdict(list)
    for c in pool:
        by_url[c["url"]].append(c)
    expected = []
    for members in by_url.values():
        winner = min(members, key=lambda c: (c["key"], c["row"]))
        expected += [(c["row"], winner["key"]) for c in members if c is not winner]
    batches = [pool[start:start + 700] for start in range(0, len(pool), 700)]
    with beam_test_pipeline() as p:
        assert_that(find_duplicate_urls(p | beam.Create(pool)), equal_to(expected))
        assert_that(p | "Batches" >> beam.Create(batches)
                    | "Batched" >> FindDuplicateUrls(),
                    equal_to(expected), label="batched")


# --- the exact cap after download ------------------------------------------------------------

def test_exact_cap_counts_completed_shards_but_drops_only_new_samples():
    samples = [{"key": f"{i:04d}", "shard": i % 3, "queries": ["red"], "new": i >= 30}
               for i in range(100)]
    samples.append({"key": "rare", "shard": 0, "queries": ["red", "hexagon"], "new": True})
    counts = collections.Counter(q for s in samples for q in s["queries"])
    ranked = sorted(samples, key=lambda s: cap_priority(0, s, counts))
    expected = [(s["shard"], failure({"key": s["key"]}, Stage.CAP, Reason.OVER_QUERY_CAP,
                                     "query 'red' is over its cap"))
                for s in ranked[40:] if s["new"]]
    assert ranked[0]["key"] == "rare" and 0 < len(expected) < 61
    with beam_test_pipeline() as p:
        drops = p | beam.Create(samples) | ExactCap(CapConfig(per_query_cap=40, seed=0))
        assert_that(drops, equal_to(expected))


# --- `openwit curate` as a whole -------------------------------------------------------------

def write_pool(path, rows):
    pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows]}),
                   path, row_group_size=97)


def pool_rows(n=1200, seed=3):
    rng = random.Random(seed)
    colours = ["red"] * 12 + ["blue"] * 4 + ["green", "teal"]
    shapes = ["circle"] * 8 + ["square"] * 3 + ["hexagon", "star"]
    rows = []
    for i in range(n):
        caption = f"a {rng.choice(colours)} {rng.choice(shapes)} on a plain background"
        if i % 40 == 0:
            caption = "un grand cercle rouge et une étoile (star) sur un fond uni, photo"
        if i % 97 == 0:
            caption = "   "
        url = f"http://img.test/{i}.jpg" if i % 50 else "http://img.test/0.jpg"
        rows.append((url if i % 211 else None, caption))
    return rows


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    write_pool(folder / "candidates.parquet", pool_rows())
    (folder / "queries.txt").write_text("red\nblue\ngreen\nteal\ncircle\nsquare\nhexagon\nstar\n"
                                        "plain background\n")
    return folder


def curate_args(pool, output, *extra):
    return ["curate", "--candidates", str(pool / "candidates.parquet"),
            "--queries", str(pool / "queries.txt"), "--output", str(output),
            "--per-query-cap", "100", "--oversample", "1", *extra]


@pytest.fixture(scope="module")
def curated(pool, tmp_path_factory):
    output = tmp_path_factory.mktemp("curated")
    assert main(curate_args(pool, output)) == 0
    return output


def test_curate_accounts_for_every_row(pool, curated):
    stats = json.loads((curated / "stats.json").read_text())
    rows = pq.read_table(curated / "curated.parquet").to_pylist()
    failures = pq.read_table(curated / "failures").to_pylist()
    assert stats["input_rows"] == 1200 == len(rows) + len(failures)
    assert stats["curated"] == len(rows) and stats["accounting_problems"] == []
    for before, after in zip(stats["stages"], stats["stages"][1:]):
        assert before["kept"] == after["in"]
    reasons = collections.Counter(f["reason"] for f in failures)
    assert reasons[Reason.MISSING_URL] == 6 and reasons[Reason.EMPTY_CAPTION] == 12
    assert reasons[Reason.DUPLICATE_URL] > 0 and reasons[Reason.BALANCED_OUT] > 0
    assert reasons[Reason.LANGUAGE_NOT_WANTED] >= 20
    distinct_rows = {sample_key(url or "", caption) for url, caption in pool_rows()}
    assert {r["key"] for r in rows} | {f["key"] for f in failures} == distinct_rows
    assert_accounted(curated)


def test_curated_rows_carry_ids_strings_and_probabilities(pool, curated):
    queries = (pool / "queries.txt").read_text().split("\n")
    matcher = QueryMatcher([q for q in queries if q])
    for row in pq.read_table(curated / "curated.parquet").to_pylist():
        assert row["query_ids"] == matcher.match_ids(row["caption"])
        assert row["queries"] == sorted(queries[i] for i in row["query_ids"])
        assert 0.0 < row["keep_probability"] <= 1.0 and row["language"] == "en"


def test_query_counts_match_a_direct_count(pool, curated):
    rows = pq.read_table(pool / "candidates.parquet").to_pylist()
    matcher = QueryMatcher((pool / "queries.txt").read_text().split("\n"))
    by_url = {}
    for row in rows:
        if row["url"] is None or not normalise_caption(row["caption"]):
            continue
        key = sample_key(row["url"], row["caption"])
        by_url.setdefault(row["url"], []).append((key, normalise_caption(row["caption"])))
    expected = collections.Counter()
    for members in by_url.values():
        expected.update(matcher.match(min(members)[1]))
    table = pq.read_table(curated / "query_counts.parquet").to_pylist()
    matcher_strings = {r["query"]: r["matched"] for r in table}
    expected_plain = {q: n for q, n in expected.items()}
    assert {q: n for q, n in matcher_strings.items() if n} == {
        q: n for q, n in expected_plain.items() if n}
    kept = collections.Counter(
        q for r in pq.read_table(curated / "curated.parquet").to_pylist() for q in r["queries"])
    assert {r["query"]: r["kept"] for r in table if r["kept"]} == dict(kept)
    assert kept["red"] < expected["red"] and kept["hexagon"] == pytest.approx(
        expected["hexagon"], abs=3)


def test_curate_reruns_are_identical_on_both_local_runners(pool, curated, tmp_path):
    assert main(curate_args(pool, tmp_path / "again")) == 0
    assert main(curate_args(pool, tmp_path / "two", "--direct_running_mode", "multi_processing",
                            "--direct_num_workers", "2")) == 0

    def content(folder):
        rows = pq.read_table(folder / "curated.parquet").to_pylist()
        return sorted(rows, key=lambda r: r["key"]), pq.read_table(
            folder / "query_counts.parquet").to_pylist()

    assert content(curated) == content(tmp_path / "again") == content(tmp_path / "two")


def test_curate_metaclip_mode_runs_end_to_end(pool, tmp_path):
    assert main(curate_args(pool, tmp_path, "--match-mode", "metaclip")) == 0
    rows = pq.read_table(tmp_path / "curated.parquet").to_pylist()
    entries = [q for q in (pool / "queries.txt").read_text().split("\n")]
    for row in rows:
        assert row["query_ids"] == metaclip_reference_match(row["caption"], entries)


def test_curate_rejects_bad_flags(pool, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(curate_args(pool, tmp_path, "--oversample", "0.5"))
    assert "--oversample must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(curate_args(pool, tmp_path, "--match-mode", "fuzzy"))
