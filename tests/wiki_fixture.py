"""A small Wikipedia world written by the tests: a pages-articles XML dump, pageview files and
a WordNet folder in the database format, with the prose every article must reduce to."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
from xml.sax.saxutils import escape, quoteattr


@dataclasses.dataclass
class Page:
    title: str
    text: str
    ns: int = 0
    redirect: str | None = None
    prose: str | None = None  # what strip_markup must leave, for articles


ARTICLES = [
    Page("Red fox",
         "{{Infobox animal|name=Red fox|status={{IUCN|LC}}}}\n"
         "The '''red fox''' is a [[fox]].<ref name=\"a\">{{cite book|title=Fox book}}</ref> "
         "A [[Vulpes vulpes|red fox]] hunts.<!-- red fox red fox -->\n"
         "[[File:Fox.jpg|thumb|A [[red fox]] in snow]]\n[[Category:Foxes]]\n[[de:Rotfuchs]]",
         prose="The red fox is a fox. A red fox hunts."),
    Page("New York City",
         "'''New York City''' is in [[New York (state)|New York]]. {{convert|5|km}}\n"
         "== History ==\nNew York is big.",
         prose="New York City is in New York. History. New York is big."),
    Page("Mercury (planet)",
         "'''Mercury''' is a [[planet]].<ref>Smith, p. 3</ref>",
         prose="Mercury is a planet."),
    Page("Zoo",
         "{| class=\"wikitable\"\n|-\n| fox || fox\n|}\nThe zoo has a ''red panda''.",
         prose="The zoo has a red panda."),
    Page("Quick foxes",
         "{{outer|{{inner|fox}}|x}}Foxes are quick. See [http://example.com/f Fox site] "
         "and [http://example.com/g].",
         prose="Foxes are quick. See Fox site and."),
    Page("Panda",
         "* The red panda eats.\n* A panda &amp; a fox.\n<math>x^2</math>",
         prose="The red panda eats. A panda & a fox."),
    Page("Star Trek: The Original Series",
         "Star Trek is a show about a red panda in [[New York]].",
         prose="Star Trek is a show about a red panda in New York."),
]
OTHER_PAGES = [
    Page("NYC", "#REDIRECT [[New York City]]", redirect="New York City"),
    Page("Category:Foxes", "fox fox fox red fox", ns=14),
    Page("Talk:Red fox", "fox fox fox", ns=1),
    Page("Template:Infobox animal", "{{{name}}} fox", ns=10),
]
# Twenty short articles pad the dump to a few dozen pages; their words are their own.
PADDING = [Page(f"Lake {n}", f"Lake {n} is deep.", prose=f"Lake {n} is deep.")
           for n in range(1, 21)]
MALFORMED_PAGE = "  <page>\n    <title>Broken</title>\n    <ns>0</ns>\n    <revision><text>unclosed\n  </page>\n"


def page_xml(page: Page) -> str:
    redirect = f"    <redirect title={quoteattr(page.redirect)} />\n" if page.redirect else ""
    return (
        "  <page>\n"
        f"    <title>{escape(page.title)}</title>\n"
        f"    <ns>{page.ns}</ns>\n"
        "    <id>1</id>\n"
        f"{redirect}"
        "    <revision>\n      <id>2</id>\n"
        f"      <text bytes=\"{len(page.text)}\" xml:space=\"preserve\">{escape(page.text)}</text>\n"
        "    </revision>\n"
        "  </page>\n"
    )


def dump_xml(pages: list[Page], malformed: bool = False) -> bytes:
    header = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" '
        'xml:lang="en">\n  <siteinfo>\n    <sitename>Wikipedia</sitename>\n'
        '    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
        '    </namespaces>\n  </siteinfo>\n'
    )
    body = "".join(page_xml(p) for p in pages)
    if malformed:
        body += MALFORMED_PAGE
    return (header + body + "</mediawiki>\n").encode("utf-8")


def all_pages() -> list[Page]:
    return [*ARTICLES, *OTHER_PAGES, *PADDING]


def write_dump(path, compress: str | None = None, malformed: bool = True) -> str:
    data = dump_xml(all_pages(), malformed=malformed)
    if compress == "bz2":
        data = bz2.compress(data)
    elif compress == "gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def reference_counts(prose_list: list[str]):
    """Unigram and bigram counts by the simplest means: lower-case, split sentences on . and ,
    and words on spaces (the fixture's prose uses no other punctuation, "&" aside)."""
    import collections

    unigrams, pairs = collections.Counter(), collections.Counter()
    for prose in prose_list:
        for piece in prose.lower().replace(",", ".").replace("&", ".").split("."):
            words = piece.split()
            unigrams.update(words)
            pairs.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return unigrams, pairs


# Hourly format: domain page_title views response_size. Daily: wiki page_title id access total hourly.
PAGEVIEW_HOUR_1 = (
    "en Red_fox 60 0\n"
    "en.m Red_fox 50 0\n"
    "en New_York_City 49 0\n"          # below 50 in the hour: ignored, as MetaCLIP did
    "en Mercury_(planet) 80 0\n"
    "en.d Red_fox 500 0\n"              # Wiktionary: another project
    "de Rotfuchs 900 0\n"
    "en Category:Foxes 900 0\n"
    "en Zoo 55 0\n"
    "en Star_Trek%3A_The_Original_Series 70 0\n"
    "en broken-line\n"
    "en Panda many 0\n"
)
PAGEVIEW_DAY_1 = (
    "en.wikipedia New_York_City 123 desktop 75 A30B45\n"
    "en.wikipedia Zoo null mobile-web 10 A10\n"   # below 50: ignored
    "en.wikipedia Not_In_Dump 5000 desktop 5000 A5000\n"
)


def write_pageviews(folder) -> list[str]:
    hourly = folder / "pageviews-20240101-000000.gz"
    hourly.write_bytes(gzip.compress(PAGEVIEW_HOUR_1.encode() + b"en \xff\xfe 70 0\n"))
    daily = folder / "pageviews-20240102-user.bz2"
    daily.write_bytes(bz2.compress(PAGEVIEW_DAY_1.encode()))
    return [str(hourly), str(daily)]


WORDNET_LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by\n" \
                  "  2 Princeton University under the following license.\n"
WORDNET_DATA = {
    "data.noun": [
        "02118333 05 n 02 red_fox 0 Vulpes_vulpes 0 001 @ 02118176 n 0000 | a fox",
        "02510455 05 n 02 giant_panda 0 panda 0 000 | a bear",
        "09405396 15 n 01 Mercury 0 000 | the planet",
        "09999999 05 n zz broken 0 000 | a malformed line (bad word count)",
    ],
    "data.verb": ["01926311 38 v 01 run 0 000 | move fast"],
    "data.adj": ["00013887 00 s 02 galore(ip) 0 in_large_quantities 0 000 | abundant"],
    "data.adv": ["00099341 02 r 01 !!! 0 000 | punctuation only"],
}


def write_wordnet(folder) -> str:
    folder.mkdir(exist_ok=True)
    for name, lines in WORDNET_DATA.items():
        (folder / name).write_text(WORDNET_LICENCE + "\n".join(lines) + "\n")
    return str(folder)
