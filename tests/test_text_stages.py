"""Normalise, match, language, URL dedup and the per-query cap, each alone in a TestPipeline."""

import collections

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from helpers import CapCandidates, StepOnElements, beam_test_pipeline, dedup_urls
from openwit.pipeline.images.cap import cap_priority
from openwit.pipeline.images.config import CapConfig
from openwit.pipeline.text.config import LanguageConfig, MatchConfig, NormaliseConfig
from openwit.pipeline.text.url_dedup import canonical_url
from openwit.pipeline.text.langid import LanguageIdentifier
from openwit.pipeline.text.language import LanguageStep
from openwit.pipeline.text.match import MatchStep, QueryMatcher
from openwit.pipeline.text.normalise import NormaliseStep, normalise_caption
from openwit.pipeline.core.records import Reason, sample_key, stable_hash64


def candidate(url, caption, queries=None, query_ids=None):
    c = {"key": sample_key(url, caption), "url": url, "caption": caption,
         "query_ids": query_ids or [], "row": stable_hash64(url, caption) >> 1}
    if queries is not None:
        c["queries"] = queries
    return c


# --- normalise -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("red &amp; blue circle", "red & blue circle"),
    ("red &amp;amp; blue", "red & blue"),
    ("cafÃ© logo", "café logo"),
    ("  a \t red\n\ncircle  ", "a red circle"),
    ("zero\u200bwidth", "zero width"),
    ("plain ascii caption", "plain ascii caption"),
    ("Cafe\u0301", "Café"),  # NFC
])
def test_normalise_caption(raw, clean):
    assert normalise_caption(raw) == clean


def test_normalise_stage_drops_empty_and_too_long():
    inputs = [candidate("http://a/1", " ok  caption "), candidate("http://a/2", " \n\t "),
              candidate("http://a/3", "x" * 50), candidate("http://a/4", "")]
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | StepOnElements(NormaliseStep(NormaliseConfig(max_caption_chars=40)))
        assert_that(result.kept | beam.Map(lambda c: c["caption"]), equal_to(["ok caption"]),
                    label="kept")
        assert_that(result.failed | beam.Map(lambda f: (f["url"], f["reason"])),
                    equal_to([("http://a/2", Reason.EMPTY_CAPTION),
                              ("http://a/3", Reason.CAPTION_TOO_LONG),
                              ("http://a/4", Reason.EMPTY_CAPTION)]), label="failed")


# --- match -----------------------------------------------------------------------------------

MATCHER = QueryMatcher(["dog", "hot dog", "New York", "c++", "red", "über"])


@pytest.mark.parametrize("text, expected", [
    ("a dog", ["dog"]),
    ("(dog)", ["dog"]),
    ("dog, cat", ["dog"]),
    ("the dog's bone", ["dog"]),
    ("dogs", []),
    ("dogs'", []),
    ("hotdog stand", []),
    ("a hot dog stand", ["dog", "hot dog"]),
    ("DOG in new york", ["New York", "dog"]),
    ("learn c++ today", ["c++"]),
    ("c++x", ["c++"]),
    ("redder", []),
    ("red_dog", []),
    ("Über alles", ["über"]),
    ("", []),
])
def test_word_boundary_matching(text, expected):
    assert MATCHER.match(text) == expected


def test_case_sensitive_matching():
    matcher = QueryMatcher(["Apple", "apple"], case_sensitive=True)
    assert matcher.match("Apple pie") == ["Apple"]
    assert matcher.match("apple pie") == ["apple"]
    folded = QueryMatcher(["Apple", "apple"])
    assert folded.match("APPLE") == ["Apple", "apple"]


def test_match_stage(tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("red\ncircle\nblue square\n\n  \nred\n")
    inputs = [candidate("http://a/1", "a red circle"), candidate("http://a/2", "a blue square"),
              candidate("http://a/3", "a green triangle")]
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | StepOnElements(MatchStep(MatchConfig(queries=str(queries))))
        assert_that(result.kept | beam.Map(lambda c: (c["url"], c["query_ids"])),
                    equal_to([("http://a/1", [0, 1]), ("http://a/2", [2])]), label="kept")
        assert_that(result.failed | beam.Map(lambda f: (f["url"], f["reason"])),
                    equal_to([("http://a/3", Reason.NO_QUERY_MATCH)]), label="failed")


def test_match_stage_without_table_keeps_all():
    inputs = [candidate("http://a/1", "anything")]
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | StepOnElements(MatchStep(MatchConfig(queries=None)))
        assert_that(result.kept | beam.Map(lambda c: c["query_ids"]), equal_to([[]]),
                    label="kept")
        assert_that(result.failed, equal_to([]), label="failed")


# --- language --------------------------------------------------------------------------------

ENGLISH = "a photo of a small red circle on a striped background"
FRENCH = "une photo d'un petit cercle rouge sur un fond rayé, logo"
GERMAN = "ein Foto von einem kleinen roten Kreis auf gestreiftem Hintergrund"


def test_language_detector_is_deterministic_across_instances():
    first, second = LanguageIdentifier(seed=0), LanguageIdentifier(seed=0)
    texts = [ENGLISH, FRENCH, GERMAN, "red", "logo design", "ok"]
    assert [first.detect(t) for t in texts] == [second.detect(t) for t in reversed(texts)][::-1]
    assert first.detect(ENGLISH)[0] == "en"
    assert first.detect(FRENCH)[0] == "fr"
    assert first.detect("12345 !!!") is None


def test_language_stage():
    inputs = [candidate("http://a/1", ENGLISH, []), candidate("http://a/2", FRENCH, []),
              candidate("http://a/3", GERMAN, []), candidate("http://a/4", "1234 5678", [])]
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | StepOnElements(LanguageStep(LanguageConfig(languages=("en", "de"))))
        assert_that(result.kept | beam.Map(lambda c: (c["url"], c["language"])),
                    equal_to([("http://a/1", "en"), ("http://a/3", "de")]), label="kept")
        assert_that(result.failed | beam.Map(lambda f: (f["url"], f["reason"])),
                    equal_to([("http://a/2", Reason.LANGUAGE_NOT_WANTED),
                              ("http://a/4", Reason.LANGUAGE_UNDETECTABLE)]), label="failed")


def test_language_stage_in_small_batches_gives_langdetects_answers():
    from openwit.pipeline.text.langid import langdetect_reference

    reference = langdetect_reference(0)

    def langdetect_answer(text):
        language, probability = reference(text)
        return language, round(probability, 4)

    texts = [ENGLISH, FRENCH, GERMAN, "Four green squares", "logo design", "red circle",
             "un carré vert", "ein grünes Quadrat", "Photo of a dog", ENGLISH]
    inputs = [candidate(f"http://a/{i}", text, []) for i, text in enumerate(texts)]
    from openwit.pipeline.text.langid import LanguageIdentifier

    every_language = tuple(LanguageIdentifier(0).languages)  # so that nothing is dropped
    config = LanguageConfig(languages=every_language, min_probability=0.0)
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | StepOnElements(LanguageStep(config), batch_size=3)
        assert_that(result.kept | beam.Map(lambda c: (c["caption"], c["language"],
                                                       c["language_prob"])),
                    equal_to([(t, *langdetect_answer(t)) for t in texts]))


def test_language_uncertain_below_min_probability():
    inputs = [candidate("http://a/1", ENGLISH, [])]
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | StepOnElements(LanguageStep(
            LanguageConfig(languages=("en",), min_probability=1.01)))
        assert_that(result.failed | beam.Map(lambda f: f["reason"]),
                    equal_to([Reason.LANGUAGE_UNCERTAIN]))


def test_any_language_skips_detection():
    inputs = [candidate("http://a/1", FRENCH, [])]
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | StepOnElements(LanguageStep(LanguageConfig(languages=())))
        assert_that(result.kept | beam.Map(lambda c: c["language"]), equal_to(["und"]))


# --- URL dedup -------------------------------------------------------------------------------

def test_canonical_url():
    assert canonical_url("HTTP://Example.COM:80/a.jpg#frag") == "http://example.com/a.jpg"
    assert canonical_url("https://example.com:443/a.jpg?x=1") == "https://example.com/a.jpg?x=1"
    assert canonical_url("https://example.com:8443/a.jpg") == "https://example.com:8443/a.jpg"
    assert canonical_url("http://example.com") == "http://example.com/"


def test_dedup_urls_keeps_the_smallest_key():
    same = [candidate("http://a.test/x.jpg", f"caption {i}") for i in range(5)]
    same.append(candidate("HTTP://A.TEST/x.jpg#top", "another spelling"))
    other = candidate("http://a.test/y.jpg", "other")
    winner = min(c["key"] for c in same)
    with beam_test_pipeline() as p:
        result = dedup_urls(p | beam.Create([*same, other]))
        assert_that(result.kept | beam.Map(lambda c: c["key"]),
                    equal_to([winner, other["key"]]), label="kept")
        assert_that(result.failed | beam.Map(lambda f: f["reason"]),
                    equal_to([Reason.DUPLICATE_URL] * 5), label="failed")


# --- per-query cap ---------------------------------------------------------------------------

def zipf_candidates(n=600):
    """Captions with a head query ("red", in most), a middle one and a rare one."""
    out = []
    for i in range(n):
        queries = ["red"] if i % 10 < 8 else ["blue"]
        if i % 3 == 0:
            queries.append("circle")
        if i % 50 == 0:
            queries.append("hexagon")
        out.append(candidate(f"http://a.test/{i}.jpg", " ".join(queries) + f" {i}", queries))
    return out


@pytest.mark.parametrize("cap", [1, 10, 100, 1000])
def test_cap_never_exceeds_and_only_trims_full_queries(cap):
    inputs = zipf_candidates()
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | CapCandidates(CapConfig(per_query_cap=cap, seed=3))

        def check(kept):
            counts = collections.Counter(q for c in kept for q in c["queries"])
            before = collections.Counter(q for c in inputs for q in c["queries"])
            for query, n in counts.items():
                assert n <= cap, (query, n)
            for query, n in before.items():
                if n <= cap:  # a query under its cap loses samples only to a full co-query
                    lost = [c for c in inputs if query in c["queries"] and c not in kept]
                    assert all(any(before[q] > cap for q in c["queries"]) for c in lost)

        assert_that(result.kept | beam.combiners.ToList(), lambda lists: check(lists[0]))
        assert_that(
            (result.kept, result.failed) | beam.Flatten() | beam.combiners.Count.Globally(),
            equal_to([len(inputs)]), label="accounted")


def test_cap_is_deterministic_and_depends_on_seed():
    inputs = zipf_candidates()

    # The expected set, computed directly from the rule the module documents.
    def expected(seed):
        counts = collections.Counter(q for c in inputs for q in c["queries"])
        priority = {c["key"]: cap_priority(seed, c, counts) for c in inputs}
        by_query = collections.defaultdict(list)
        for c in inputs:
            for q in c["queries"]:
                by_query[q].append(priority[c["key"]])
        limits = {q: sorted(p)[49] for q, p in by_query.items() if len(p) > 50}
        return sorted(c["key"] for c in inputs
                      if all(priority[c["key"]] <= limits.get(q, (1e18, 1.0))
                             for q in c["queries"]))

    assert expected(1) != expected(2)
    with beam_test_pipeline() as p:
        for seed in (1, 2):
            result = (p | f"Create {seed}" >> beam.Create(inputs)
                      | f"Cap {seed}" >> CapCandidates(CapConfig(per_query_cap=50, seed=seed)))
            assert_that(result.kept | f"keys {seed}" >> beam.Map(lambda c: c["key"]),
                        equal_to(expected(seed)), label=f"seed {seed}")


def test_cap_keeps_tail_queries_that_ride_on_head_queries():
    # 300 "red" captions, 20 of them also "hexagon": a cap of 50 trims "red" but must keep
    # every hexagon, which a random pick inside "red" would mostly throw away.
    inputs = [candidate(f"http://a.test/{i}.jpg", f"red {i}",
                        ["red", "hexagon"] if i < 20 else ["red"]) for i in range(300)]
    with beam_test_pipeline() as p:
        result = p | beam.Create(inputs) | CapCandidates(CapConfig(per_query_cap=50))
        assert_that(
            result.kept | beam.Map(lambda c: "hexagon" in c["queries"])
            | beam.combiners.Count.PerElement(),
            equal_to([(True, 20), (False, 30)]))


def test_plain_url_fast_path_agrees_with_the_full_parse():
    import random
    import urllib.parse

    from openwit.pipeline.text.read import PLAIN_URL, check_url

    rng = random.Random(4)
    parts = ["http", "https", "HTTP", "://", "a.test", "A.Test", ":80", ":443", ":8080", "/",
             "/x.jpg", "?", "q=1", "#f", "@", "user", " ", "\t", "[::1]", "..", "-", "%20"]
    urls = ["http://a.test/x.jpg", "https://a.test/x?", "https://a.test/x??", "http://a.test/",
            "http://a.test", "https://a.test/?x=1#frag", "http://a.test/ x"]
    urls += ["".join(rng.choice(parts) for _ in range(rng.randint(1, 8))) for _ in range(5000)]
    urls += ["http://a.test/" + "".join(rng.choice(parts) for _ in range(rng.randint(0, 5)))
             for _ in range(3000)]
    assert sum(bool(PLAIN_URL.fullmatch(url)) for url in urls) > 1000
    for url in urls:
        plain = bool(PLAIN_URL.fullmatch(url))
        if plain:
            assert check_url(url) is None, url
            # the full parse, as canonical_url does for other URLs
            split = urllib.parse.urlsplit(url)
            slow = urllib.parse.urlunsplit((split.scheme, split.hostname, split.path or "/",
                                            split.query, ""))
            assert canonical_url(url) == slow, url


def test_normalise_fast_path_agrees_with_the_full_path():
    import random

    from openwit.pipeline.text import normalise

    def full_path(caption):  # the ASCII steps without the printable-ASCII shortcut
        if not caption.isascii() or "&" in caption:
            return None  # ftfy's path, not the shortcut's concern
        caption = normalise._INVISIBLE.sub(" ", caption)
        return normalise._WHITESPACE.sub(" ", caption).strip()

    rng = random.Random(5)
    alphabet = list("ab Z9.,'-\t\n\x0b\x1f") + ["  "]
    for _ in range(5000):
        caption = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        expected = full_path(caption)
        if expected is not None:
            assert normalise_caption(caption) == expected, repr(caption)
