"""Wikitext -> plain prose, and prose -> word n-grams. Pure functions, no Beam.

The stripper is a sequence of regular-expression passes in the manner of WikiExtractor rather
than a full parser: mwparserfromhell is far too slow for a whole dump, and word counts only
need the prose. What goes: comments, <ref>s and non-prose tags (math, gallery, code, ...), templates and
tables (innermost first, so nesting unwinds), file/image/category and interlanguage links,
external-link URLs, bold/italic quotes, list and heading markup. What stays: link labels
(`[[capital city|capital]]` -> "capital"), external-link labels, headings' words, HTML entities
decoded.

Tokens are runs of letters and digits, joined by inner apostrophes or hyphens ("don't",
"Île-de-France", "1990s"). A bigram is two tokens with only whitespace between them: a comma,
full stop, bracket or line break ends the run, as MetaCLIP resets its bigram at punctuation.
"""

from __future__ import annotations

import html
import re

# Tags whose contents are not prose: drop them with everything inside.
_DROP_WITH_CONTENT = ("ref", "math", "gallery", "code", "pre", "syntaxhighlight", "source",
                      "score", "timeline", "chem", "ce", "graph", "mapframe", "imagemap",
                      "references", "templatedata", "hiero", "nowiki")
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_BLOCK_TAGS = re.compile(
    r"<(%s)\b[^>]*?(?<!/)>.*?</\1\s*>" % "|".join(_DROP_WITH_CONTENT), re.DOTALL | re.IGNORECASE
)
_SELF_CLOSING_OR_PLAIN_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
_INNERMOST_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_INNERMOST_TABLE = re.compile(r"\{\|(?:(?!\{\|)[\s\S])*?\|\}")
_INNERMOST_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_BARE_URL = re.compile(r"https?://[^\s<>\]|]+")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_LINE_MARKUP = re.compile(r"^[*#:;]+\s*|^-{4,}\s*$", re.MULTILINE)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_LEFTOVER_BRACES = re.compile(r"\{\{|\}\}|\{\||\|\}")
# Link prefixes whose target is not prose: media, categories, other wikis and languages.
_NON_PROSE_LINK = re.compile(
    r"^\s*:?\s*(?:file|image|media|category|wikt|wiktionary|commons|wikipedia|wp|help|portal|"
    r"template|special|user|talk|draft|module|[a-z]{2,3}(?:-[a-z]{2,8})?)\s*:", re.IGNORECASE
)
# Nested structures are unwound innermost first; real articles nest a few levels deep.
_MAX_NESTING_PASSES = 12


def _link_text(match: re.Match) -> str:
    inner = match.group(1)
    if _NON_PROSE_LINK.match(inner):
        return ""
    target, _, label = inner.partition("|")
    return label if label else target.split("#", 1)[0]


def _remove_innermost(pattern: re.Pattern, text: str) -> str:
    for _ in range(_MAX_NESTING_PASSES):
        text, removed = pattern.subn("", text)
        if not removed:
            break
    return text


def strip_markup(wikitext: str) -> str:
    """Plain prose of a page's wikitext; whitespace and line breaks are kept as separators."""
    text = _COMMENT.sub("", wikitext)
    text = _BLOCK_TAGS.sub("", text)
    text = _remove_innermost(_INNERMOST_TEMPLATE, text)
    text = _remove_innermost(_INNERMOST_TABLE, text)
    for _ in range(_MAX_NESTING_PASSES):  # a file caption can hold links of its own
        text, replaced = _INNERMOST_LINK.subn(_link_text, text)
        if not replaced:
            break
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _BARE_URL.sub("", text)
    text = _SELF_CLOSING_OR_PLAIN_TAG.sub("", text)
    text = _LEFTOVER_BRACES.sub("", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _LINE_MARKUP.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return text


# Anything that is not a word character, whitespace, apostrophe or hyphen ends a bigram run.
_RUN_BREAK = re.compile(r"[^\w\s'’\-]+|\n+")
_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def tokens(text: str) -> list[str]:
    """Every token of the text (for word counts, where runs do not matter)."""
    return _TOKEN.findall(text)


def token_runs(text: str) -> list[list[str]]:
    """Tokens of the text, grouped into runs that no punctuation or line break interrupts."""
    runs = []
    for segment in _RUN_BREAK.split(text):
        tokens = _TOKEN.findall(segment)
        if tokens:
            runs.append(tokens)
    return runs
