"""The query table builder: markup stripping, each source transform alone in a TestPipeline,
then `openwit queries` end to end on a small Wikipedia world written by the tests."""

import json
import math

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.io import source_test_utils
from apache_beam.testing.util import assert_that, equal_to

import wiki_fixture as wiki
from helpers import beam_test_pipeline
from openwit.pipeline.apps.cli import main
from openwit.queries.config import TitleConfig, WikipediaConfig, WordNetConfig
from openwit.queries.pageviews import ReadPageviews, TitlesFromPageviews, parse_pageview_line, project_codes
from openwit.queries.rows import Source, merge_key, merge_rows, query_row
from openwit.queries.wikipedia import (
    WikipediaDumpSource,
    WikipediaQueries,
    eligible_word_set,
    max_word_count_for_pmi,
    parse_page,
    pmi,
    title_query,
)
from openwit.queries.wikitext import strip_markup, token_runs
from openwit.queries.wordnet import WordNetQueries, synset_lemmas

# --- markup and tokens -----------------------------------------------------------------------


@pytest.mark.parametrize("page", wiki.ARTICLES, ids=lambda p: p.title)
def test_each_fixture_article_reduces_to_its_prose(page):
    reference, _ = wiki.reference_counts([page.prose])
    tokens = [t for run in token_runs(strip_markup(page.text).casefold()) for t in run]
    assert sorted(tokens) == sorted(reference.elements())


@pytest.mark.parametrize("wikitext, prose", [
    ("a {{t|{{u|{{v|deep}}}}}} b", "a  b"),
    ("x<!-- hidden -->y", "xy"),
    ("x<!-- never closed", "x"),
    ("a<ref name=r/>b<ref>c {{cite|d}}</ref>e", "abe"),
    ("[[Paris]] and [[Lyon|the city]]", "Paris and the city"),
    ("[[dog]]s", "dogs"),
    ("[[Paris#History|old Paris]]", "old Paris"),
    ("[[Category:X]][[fr:Chien]][[Image:a.png|thumb|a [[cat]]]]c", "c"),
    ("[https://e.org label here] [https://e.org]", "label here "),
    ("see https://e.org/x now", "see  now"),
    ("'''bold''' and ''italic''", "bold and italic"),
    ("== Head ==\ntext", "Head\ntext"),
    ("{|\n| {{t|x}} || y\n|}\nafter", "\nafter"),
    ("a &ndash; b &amp; c", "a – b & c"),
    ("<small>tiny</small> <br/>", "tiny "),
    ("<math>E=mc^2</math>kept", "kept"),
])
def test_strip_markup(wikitext, prose):
    assert strip_markup(wikitext) == prose


def test_strip_markup_survives_unbalanced_markup():
    assert "words" in strip_markup("{{never closed [[link words {| table")


def test_token_runs_break_at_punctuation_and_lines():
    assert token_runs("Île-de-France, don't stop; the 1990s\nnew line") == [
        ["Île-de-France"], ["don't", "stop"], ["the", "1990s"], ["new", "line"]]
    assert token_runs("--- ... !!") == []


# --- dump reading ----------------------------------------------------------------------------


def test_dump_source_splits_match_a_whole_read(tmp_path):
    source = WikipediaDumpSource(wiki.write_dump(tmp_path / "dump.xml"))
    pages = source_test_utils.read_from_source(source)
    assert len(pages) == len(wiki.all_pages()) + 1  # + the malformed one
    splits = [(s.source, s.start_position, s.stop_position) for s in source.split(700)]
    assert len(splits) > 5
    source_test_utils.assert_sources_equal_reference_source((source, None, None), splits)


@pytest.mark.parametrize("compress", ["bz2", "gz"])
def test_compressed_dumps_read_the_same_pages(tmp_path, compress):
    plain = source_test_utils.read_from_source(
        WikipediaDumpSource(wiki.write_dump(tmp_path / "dump.xml")))
    packed = source_test_utils.read_from_source(
        WikipediaDumpSource(wiki.write_dump(tmp_path / f"dump.xml.{compress}", compress)))
    assert packed == plain


def test_parse_page_and_its_failures():
    page = parse_page(wiki.page_xml(wiki.OTHER_PAGES[0]).encode())
    assert page["title"] == "NYC" and page["redirect"] and page["ns"] == 0
    with pytest.raises(ValueError, match="malformed_xml"):
        parse_page(wiki.MALFORMED_PAGE.encode())
    with pytest.raises(ValueError, match="missing_title"):
        parse_page(b"<page><ns>0</ns></page>")
    with pytest.raises(ValueError, match="missing_namespace"):
        parse_page(b"<page><title>x</title></page>")


# --- counts, PMI, titles ---------------------------------------------------------------------

PROSE = [p.prose for p in wiki.ARTICLES + wiki.PADDING]
TOKENS = 139  # 10 + 12 + 4 + 6 + 7 + 8 + 12 words in the seven articles, 20 x 4 in the lakes


def test_hand_counts_of_the_fixture():
    unigrams, pairs = wiki.reference_counts(PROSE)
    assert sum(unigrams.values()) == TOKENS
    assert (unigrams["fox"], unigrams["red"], unigrams["panda"], unigrams["is"]) == (5, 5, 4, 25)
    assert (pairs["new york"], pairs["red panda"], pairs["red fox"], pairs["a red"]) == (4, 3, 2, 3)
    # log2(c(ab) * N / (c(a) * c(b)))
    assert pmi(4, 4, 4, TOKENS) == pytest.approx(math.log2(34.75))
    assert pmi(2, 5, 5, TOKENS) == pytest.approx(3.4751, abs=1e-4)
    assert pmi(3, 8, 5, TOKENS) == pytest.approx(3.3820, abs=1e-4)  # "a red": just below 3.4


def test_wikipedia_unigrams_bigrams_and_titles(tmp_path):
    config = WikipediaConfig(dumps=(wiki.write_dump(tmp_path / "dump.xml"),),
                             min_unigram_count=4, min_bigram_count=2, min_bigram_pmi=3.4)
    unigrams, pairs = wiki.reference_counts(PROSE)
    expected_unigrams = sorted((w, n) for w, n in unigrams.items() if n >= 4)
    assert [w for w, _ in expected_unigrams] == sorted(
        ["fox", "red", "panda", "new", "york", "is", "a", "lake", "deep"])
    expected_bigrams = sorted(
        (b, n, round(pmi(n, unigrams[b.split()[0]], unigrams[b.split()[1]], TOKENS), 4))
        for b, n in pairs.items()
        if n >= 2 and pmi(n, unigrams[b.split()[0]], unigrams[b.split()[1]], TOKENS) >= 3.4)
    assert [b for b, _, _ in expected_bigrams] == ["in new", "new york", "red fox", "red panda", "the red"]
    # Only words seen 2..floor(139 / 2^3.4) = 13 times can be in a bigram that reaches 3.4.
    assert max_word_count_for_pmi(TOKENS, 3.4) == 13
    eligible = {w for w, n in unigrams.items() if 2 <= n <= 13}
    assert {"is", "lake", "deep"}.isdisjoint(eligible) and {"red", "fox", "a"} <= eligible
    scored = {b for b in pairs if set(b.split()) <= eligible}
    article_titles = [title_query(p.title, False) for p in wiki.ARTICLES + wiki.PADDING]
    assert "Mercury" in article_titles and "Star Trek: The Original Series" in article_titles

    with beam_test_pipeline() as p:
        rows, stats = p | WikipediaQueries(config, TitleConfig())
        by_source = lambda source: rows | f"Only {source}" >> beam.Filter(
            lambda r: r.source == source)
        assert_that(by_source(Source.UNIGRAM) | "U" >> beam.Map(lambda r: (r.query, r.count)),
                    equal_to(expected_unigrams), label="unigrams")
        assert_that(by_source(Source.BIGRAM) | "B" >> beam.Map(
            lambda r: (r.query, r.count, r.pmi)), equal_to(expected_bigrams),
            label="bigrams")
        assert_that(by_source(Source.TITLE) | "T" >> beam.Map(lambda r: (r.query, r.views)),
                    equal_to([(t, None) for t in article_titles]), label="titles")
        assert_that(stats | beam.CombinePerKey(sum), equal_to([
            ("wikipedia.pages", len(wiki.all_pages())),
            ("wikipedia.failed.malformed_xml", 1),
            ("wikipedia.articles", len(wiki.ARTICLES) + len(wiki.PADDING)),
            ("wikipedia.tokens", TOKENS),
            ("wikipedia.distinct_unigrams", len(unigrams)),
            ("wikipedia.words_eligible_for_bigrams", len(eligible)),
            ("wikipedia.bigrams_scored", len(scored)),
        ]), label="stats")


@pytest.mark.parametrize("min_pmi, min_count", [(0.5, 1), (3.0, 1), (3.4, 2), (5.5, 1), (7.2, 1),
                                                (8.0, 1)])
def test_pruned_bigram_pass_finds_exactly_what_scoring_every_bigram_finds(
        tmp_path, min_pmi, min_count):
    unigrams, pairs = wiki.reference_counts(PROSE)
    brute_force = sorted(
        b for b, n in pairs.items() if n >= min_count
        and pmi(n, unigrams[b.split()[0]], unigrams[b.split()[1]], TOKENS) >= min_pmi)
    config = WikipediaConfig(dumps=(wiki.write_dump(tmp_path / "dump.xml"),),
                             min_unigram_count=10**6, min_bigram_count=min_count,
                             min_bigram_pmi=min_pmi)
    with beam_test_pipeline() as p:
        rows, _ = p | WikipediaQueries(config, TitleConfig())
        assert_that(rows | beam.Filter(lambda r: r.source == Source.BIGRAM)
                    | beam.Map(lambda r: r.query), equal_to(brute_force))


def test_word_set_stores_the_smaller_side():
    small_eligible = eligible_word_set([(True, ["a"]), (False, ["b", "c"])])
    small_ineligible = eligible_word_set([(True, ["a", "b"]), (False, ["c"])])
    assert small_eligible.words == {"a"} and small_ineligible.words == {"c"}
    for words in (small_eligible, small_ineligible):
        assert "a" in words and "c" not in words
    assert "x" not in eligible_word_set([(False, ["x"])])


def test_local_counts_flushed_early_sum_to_the_same(tmp_path):
    """A tiny local cache forces many partial flushes; the combine must still give exact sums."""
    config = WikipediaConfig(dumps=(wiki.write_dump(tmp_path / "dump.xml"),),
                             min_unigram_count=1, max_cached_keys=3)
    unigrams, _ = wiki.reference_counts(PROSE)
    with beam_test_pipeline() as p:
        rows, _ = p | WikipediaQueries(config, TitleConfig())
        assert_that(rows | beam.Filter(lambda r: r.source == Source.UNIGRAM)
                    | beam.Map(lambda r: (r.query, r.count)),
                    equal_to(list(unigrams.items())))


def test_case_sensitive_counting_keeps_capitals(tmp_path):
    config = WikipediaConfig(dumps=(wiki.write_dump(tmp_path / "dump.xml"),),
                             min_unigram_count=4, case_sensitive=True, min_bigram_pmi=99)
    with beam_test_pipeline() as p:
        rows, _ = p | WikipediaQueries(config, TitleConfig())
        assert_that(rows | beam.Filter(lambda r: r.source == Source.UNIGRAM)
                    | beam.Map(lambda r: r.query),
                    equal_to(["fox", "red", "New", "York", "is", "a", "Lake", "deep", "panda"]))


def test_titles_filtered_by_page_views(tmp_path):
    pageviews = tuple(wiki.write_pageviews(tmp_path))
    titles = TitleConfig(pageviews=pageviews, min_views=70, min_line_views=50)
    config = WikipediaConfig(dumps=(wiki.write_dump(tmp_path / "dump.xml"),), min_bigram_pmi=99,
                             min_unigram_count=10_000)
    with beam_test_pipeline() as p:
        views, view_stats = p | ReadPageviews(titles)
        rows, _ = p | WikipediaQueries(config, titles, views)
        assert_that(rows | beam.Map(lambda r: (r.query, r.source, r.views)), equal_to([
            ("Red fox", Source.TITLE, 110),        # 60 desktop + 50 mobile
            ("New York City", Source.TITLE, 75),   # the hour of 49 does not count
            ("Mercury", Source.TITLE, 80),
            ("Star Trek: The Original Series", Source.TITLE, 70),  # percent-decoded
        ]), label="titles")
        assert_that(view_stats | beam.CombinePerKey(sum), equal_to([
            ("pageviews.lines_counted", 8),
            ("pageviews.other_project_lines", 2),
            ("pageviews.lines_below_min_line_views", 2),
            ("pageviews.failed.wrong_field_count", 1),
            ("pageviews.failed.bad_view_count", 1),
            ("pageviews.failed.not_utf8", 1),
        ]), label="stats")


def test_titles_from_page_views_alone_skip_other_namespaces(tmp_path):
    titles = TitleConfig(pageviews=tuple(wiki.write_pageviews(tmp_path)), min_views=70)
    with beam_test_pipeline() as p:
        views, _ = p | ReadPageviews(titles)
        rows = views | TitlesFromPageviews(titles)
        assert_that(rows | beam.Map(lambda r: r.query), equal_to(
            ["Red fox", "New York City", "Mercury", "Star Trek: The Original Series",
             "Not In Dump"]))


@pytest.mark.parametrize("line, parsed", [
    (b"en Red_fox 60 0", ("Red fox", 60)),
    (b"en.m Caf%C3%A9 7 0", ("Café", 7)),
    (b"en.wikipedia Red_fox 12 desktop 99 A99", ("Red fox", 99)),
    (b"en.wikipedia Red_fox null mobile-app 5", ("Red fox", 5)),
    (b"fr Renard 60 0", None),
    (b"en.d Red_fox 60 0", None),
])
def test_parse_pageview_line(line, parsed):
    assert parse_pageview_line(line, project_codes("en")) == parsed


@pytest.mark.parametrize("line, reason", [
    (b"en Red_fox", "wrong_field_count"),
    (b"en Red_fox lots 0", "bad_view_count"),
    (b"en Red_fox -3 0", "bad_view_count"),
    (b"en _ 3 0", "missing_title"),
    (b"en \xff 3 0", "not_utf8"),
])
def test_parse_pageview_line_failures(line, reason):
    with pytest.raises(ValueError, match=reason):
        parse_pageview_line(line, project_codes("en"))


# --- WordNet and merging ---------------------------------------------------------------------


def test_synset_lemmas():
    assert synset_lemmas(wiki.WORDNET_DATA["data.noun"][0]) == ["red fox", "Vulpes vulpes"]
    assert synset_lemmas(wiki.WORDNET_DATA["data.adj"][0]) == ["galore", "in large quantities"]
    with pytest.raises(ValueError):
        synset_lemmas(wiki.WORDNET_DATA["data.noun"][3])


@pytest.mark.parametrize("lemmas, expected", [
    ("all", ["red fox", "Vulpes vulpes", "giant panda", "panda", "Mercury", "run", "galore",
             "in large quantities", "!!!"]),
    ("head", ["red fox", "giant panda", "Mercury", "run", "galore", "!!!"]),
])
def test_wordnet_source(tmp_path, lemmas, expected):
    config = WordNetConfig(folder=wiki.write_wordnet(tmp_path / "wn"), lemmas=lemmas)
    with beam_test_pipeline() as p:
        rows, stats = p | WordNetQueries(config)
        assert_that(rows | beam.Map(lambda r: r.query), equal_to(expected), label="rows")
        assert_that(stats | beam.CombinePerKey(sum), equal_to(
            [("wordnet.synsets", 6), ("wordnet.failed.malformed_line", 1)]), label="stats")


def test_merge_rows_prefers_the_most_specific_spelling_and_keeps_every_statistic():
    rows = [query_row("red  fox", Source.BIGRAM, count=2, pmi=3.5),
            query_row("Red fox", Source.TITLE, views=110),
            query_row("red fox", Source.WORDNET)]
    assert merge_rows(rows) == ("Red fox", ("title", "wordnet", "bigram"), 2, 3.5, 110, None)
    assert merge_key("  Red\u00a0FOX ", case_sensitive=False) == "red fox"
    assert merge_key("Red FOX", case_sensitive=True) == "Red FOX"


# --- the command -----------------------------------------------------------------------------


def read_table(folder):
    return pq.read_table(folder / "queries.parquet").to_pylist()


def test_openwit_queries_follows_the_recipe_end_to_end(tmp_path, capsys):
    (tmp_path / "extra.txt").write_text("hot dog\nRed Fox\n\n")
    (tmp_path / "stop.txt").write_text("LAKE\n")
    out = tmp_path / "out"
    argv = ["queries", "--wikipedia-dump", wiki.write_dump(tmp_path / "dump.xml.bz2", "bz2"),
            "--output", str(out), "--wordnet", wiki.write_wordnet(tmp_path / "wn"),
            "--extra-queries", str(tmp_path / "extra.txt"), "--stop-list", str(tmp_path / "stop.txt"),
            "--min-unigram-count", "4", "--min-bigram-count", "2", "--min-bigram-pmi", "3.4"]
    for path in wiki.write_pageviews(tmp_path):
        argv += ["--pageviews", path]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rows = read_table(out)
    by_query = {r["query"]: r for r in rows}
    assert [r["id"] for r in rows] == list(range(len(rows)))
    assert len({r["query"].casefold() for r in rows}) == len(rows)
    assert by_query["Red Fox"] == {"id": by_query["Red Fox"]["id"], "query": "Red Fox",
                                   "sources": ["user", "title", "wordnet", "bigram"],
                                   "count": 2, "pmi": pytest.approx(3.4751, abs=1e-4),
                                   "views": 110, "zipf": None}
    assert by_query["Mercury"]["sources"] == ["title", "wordnet"]
    assert by_query["panda"]["sources"] == ["wordnet", "unigram"]
    assert by_query["hot dog"]["sources"] == ["user"]
    assert "lake" not in {q.casefold() for q in by_query}  # stop list, any case
    assert "!!!" not in by_query
    assert "Zoo" not in by_query  # 55 views
    # Ids follow the merge key's order.
    assert [r["query"].casefold() for r in rows] == sorted(r["query"].casefold() for r in rows)

    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == len(rows)
    assert stats["counts"]["dropped.stop_list"] == 1
    assert stats["counts"]["dropped.no_word_character"] == 1
    assert stats["counts"]["wikipedia.failed.malformed_xml"] == 1
    assert stats["by_source"]["bigram"]["rows"] == 5
    assert stats["config"]["wikipedia"]["min_bigram_pmi"] == 3.4
    assert f"{len(rows)} queries written" in printed and "title" in printed


def test_rerun_gives_the_same_table_bytes(tmp_path):
    argv = ["queries", "--wikipedia-dump", wiki.write_dump(tmp_path / "dump.xml"),
            "--wordnet", wiki.write_wordnet(tmp_path / "wn"), "--min-unigram-count", "2",
            "--min-bigram-pmi", "3"]
    main(argv + ["--output", str(tmp_path / "a")])
    main(argv + ["--output", str(tmp_path / "b"), "--direct_running_mode", "multi_processing",
                 "--direct_num_workers", "2"])
    assert (tmp_path / "a/queries.parquet").read_bytes() == \
        (tmp_path / "b/queries.parquet").read_bytes()


def test_openwit_build_accepts_the_table(tmp_path, site):
    from helpers import Route, jpeg_bytes

    out = tmp_path / "q"
    main(["queries", "--wikipedia-dump", wiki.write_dump(tmp_path / "dump.xml"), "--wordnet",
          "none", "--min-unigram-count", "1000", "--output", str(out)])
    site.routes["/fox.jpg"] = Route(body=jpeg_bytes())
    site.routes["/cat.jpg"] = Route(body=jpeg_bytes((0, 0, 200)))
    (tmp_path / "c.csv").write_text(
        f"url,caption\n{site.url('/fox.jpg')},Photo of Mercury at night\n"
        f"{site.url('/cat.jpg')},a sleeping cat\n")
    corpus = tmp_path / "corpus"
    assert main(["build", "--candidates", str(tmp_path / "c.csv"), "--queries",
                 str(out / "queries.parquet"), "--output", str(corpus), "--languages", "any",
                 "--allow-network", "127.0.0.1/32"]) == 0
    stats = json.loads((corpus / "stats.json").read_text())
    assert stats["written"] == 1
    samples = pq.read_table(corpus / "shards" / "000000.parquet").to_pylist()
    assert samples[0]["queries"] == ["Mercury"]


@pytest.mark.slow
def test_offline_default_is_a_real_table(tmp_path, capsys):
    """No inputs: wordfreq's list (+ WordNet where installed) gives a few hundred thousand."""
    assert main(["queries", "--output", str(tmp_path)]) == 0
    rows = read_table(tmp_path)
    assert len(rows) > 150_000
    keys = [merge_key(r["query"], case_sensitive=False) for r in rows]
    assert len(set(keys)) == len(keys)
    by_query = {r["query"]: r for r in rows}
    assert "dog" in by_query and by_query["dog"]["zipf"] > 4
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["by_source"]["unigram"]["rows"] > 150_000


@pytest.mark.parametrize("argv, message", [
    (["queries", "--wikipedia-dump", "{tmp}/none.xml"], "matches no file"),
    (["queries", "--wordnet", "{tmp}"], "lacks data.noun"),
    (["queries", "--wordfreq", "maybe"], "--wordfreq must be"),
    (["queries", "--wordnet", "none", "--wordfreq", "off"], "no query source"),
    (["queries", "--min-unigram-cont", "3"], "unknown option(s): --min-unigram-cont"),
    (["queries", "--min-bigram-count", "0"], "--min-bigram-count must be at least 1"),
])
def test_queries_user_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
