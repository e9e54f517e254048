"""Stage 2: normalise captions (HTML entities, mojibake, Unicode form, whitespace).

ftfy repairs mojibake ("cafÃ©" -> "café") and unescapes HTML; it is the slow part, so a caption
that is pure ASCII without an "&" (most of them) skips it: neither mojibake nor an entity can
occur in such a string, so the fast path gives the same result.
"""

from __future__ import annotations

import html
import re
import unicodedata

from apache_beam.metrics import Metrics

from openwit.pipeline.text.config import NormaliseConfig
from openwit.pipeline.core.records import Reason, Stage, failure
from openwit.pipeline.text.steps import Step

_WHITESPACE = re.compile(r"\s+")
# C0/C1 control characters and zero-width marks that alt texts pick up from CMS templates.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
# Format characters that separate nothing and would let a caption display differently from
# what it says: the soft hyphen, bidirectional embeddings, overrides and isolates, the word
# joiner and invisible operators, and tag characters. Removed, not spaced: "co\u00adoperate"
# is one word.
_HIDDEN = re.compile("[\u00ad\u202a-\u202e\u2060-\u2064\u2066-\u2069\U000e0000-\U000e007f]")


def normalise_caption(caption: str) -> str:
    # Printable ASCII without "&" or double spaces has no entity, mojibake, invisible or
    # non-space whitespace character to fix: only its ends can change.
    if caption.isascii() and caption.isprintable() and "&" not in caption \
            and "  " not in caption:
        return caption.strip()
    if not caption.isascii() or "&" in caption:
        import ftfy  # imported here: most workers' captions never need it

        caption = ftfy.fix_text(caption, unescape_html=True, normalization="NFC")
        # Double-escaped entities ("&amp;amp;") survive one unescape.
        for _ in range(2):
            unescaped = html.unescape(caption)
            if unescaped == caption:
                break
            caption = unescaped
        caption = unicodedata.normalize("NFC", caption)
    caption = _HIDDEN.sub("", caption)
    caption = _INVISIBLE.sub(" ", caption)
    return _WHITESPACE.sub(" ", caption).strip()


class NormaliseStep(Step):
    stage = Stage.NORMALISE

    def __init__(self, config: NormaliseConfig):
        self._config = config

    def setup(self):
        self._changed = Metrics.counter("openwit", "normalise.changed")

    def run(self, candidates, side):
        kept, failures, changed = [], [], 0
        max_chars = self._config.max_caption_chars
        for candidate in candidates:
            caption = normalise_caption(candidate["caption"])
            if not caption:
                failures.append(failure(candidate, Stage.NORMALISE, Reason.EMPTY_CAPTION))
            elif len(caption) > max_chars:
                failures.append(failure(candidate, Stage.NORMALISE, Reason.CAPTION_TOO_LONG,
                                        f"{len(caption)} characters"))
            elif caption == candidate["caption"]:
                kept.append(candidate)
            else:
                changed += 1
                kept.append({**candidate, "caption": caption})
        self._changed.inc(changed)
        return kept, failures
