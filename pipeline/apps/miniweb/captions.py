"""Alt-text-like captions for mini-web items.

English captions are composed from small random choices (determiner, word
order, which true facts to mention, an optional "medium" word such as logo or
icon, letter case) rather than picked from a short list, so that a model
cannot learn the templates instead of the images.  Every fact a caption states
is true of the rendered image, except in the deliberately mislabelled rows.

Also here: captions in five other languages, and the noise transforms that
real alt text suffers from (file names, spam, HTML entities, mojibake, ...).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from .render import BACKGROUNDS, COLOURS, SHAPES, ItemSpec

CAPTION_NOISES: tuple[str, ...] = ("filename", "spam", "empty", "long", "entities", "mojibake", "whitespace")

PLURALS = MappingProxyType({shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES})
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
COUNT_WORDS = MappingProxyType({1: "one", 2: "two", 3: "three", 4: "four"})
SIZE_WORDS = MappingProxyType(
    {"small": ("small", "little", "tiny"), "medium": (), "large": ("large", "big", "huge")}
)
BACKGROUND_WORDS = MappingProxyType(
    {
        "plain": ("plain",),
        "striped": ("striped",),
        "dotted": ("dotted", "spotted"),
        "checkered": ("checkered", "checkerboard"),
        "gradient": ("gradient",),
        "noisy": ("noisy", "textured", "grainy"),
    }
)
POSITION_PHRASES = MappingProxyType(
    {
        "center": ("in the center", "in the middle", "centered"),
        "left": ("on the left", "on the left side", "at the left"),
        "right": ("on the right", "on the right side", "at the right"),
        "top": ("at the top", "near the top", "top"),
        "bottom": ("at the bottom", "near the bottom", "bottom"),
        "top left": ("in the top left", "in the top left corner", "top-left"),
        "top right": ("in the top right", "in the top right corner", "top-right"),
        "bottom left": ("in the bottom left", "in the bottom left corner", "bottom-left"),
        "bottom right": ("in the bottom right", "in the bottom right corner", "bottom-right"),
    }
)
STYLE_ADJECTIVES = MappingProxyType(
    {"filled": ("solid", "filled"), "outlined": ("outlined", "outline"), "shadow": (), "sticker": ()}
)
STYLE_SUFFIXES = MappingProxyType(
    {
        "filled": (),
        "outlined": ("outline", "outline drawing"),
        "shadow": ("with a drop shadow", "with shadow", "with a shadow"),
        "sticker": ("sticker", "die-cut sticker"),
    }
)
# Words that alt text uses for clip-art images whatever they show.  "sticker"
# is deliberately absent: it is only used when the image really is one.
MEDIA: tuple[str, ...] = (
    "logo", "icon", "poster", "drawing", "design", "cartoon", "clipart",
    "illustration", "graphic", "emblem", "symbol",
)
# International words that also appear in the foreign captions, so those pass
# query matching and have to be caught by language detection.
INTERNATIONAL_WORDS: tuple[str, ...] = ("logo", "icon", "poster", "design", "sticker", "cartoon", "pixel")
# Words of the phrases above that name no concept.
_FUNCTION_WORDS = frozenset(
    {"a", "at", "corner", "cut", "die", "drop", "in", "near", "on", "side", "the", "with"}
)
# Prefixes that take a full noun phrase ("photo of a red star") and ones that
# only fit a bare one ("cute red star").
_NOUN_PREFIXES = ("photo of ", "image of ", "picture of ", "stock image: ")
_ADJECTIVE_PREFIXES = ("cute ", "simple ", "free ", "vector ")


def query_words() -> list[str]:
    """Every concept word a caption can use, lowercase, sorted, one per query."""
    words: set[str] = set(SHAPES) | set(PLURALS.values()) | set(DIGIT_WORDS)
    words |= {"digit", "number", "single", "pair", "pixel"} | set(COUNT_WORDS.values())
    words |= set(COLOURS)
    for group in (SIZE_WORDS, BACKGROUND_WORDS, STYLE_ADJECTIVES, STYLE_SUFFIXES, POSITION_PHRASES):
        for phrases in group.values():
            for phrase in phrases:
                words |= set(phrase.replace("-", " ").split())
    words |= set(MEDIA)
    return sorted(words - _FUNCTION_WORDS)


# --------------------------------------------------------------------------
# English


def concept_words(spec: ItemSpec) -> list[str]:
    """The true concept words of the image (what ground truth records)."""
    words = ["digit", DIGIT_WORDS[spec.digit]] if spec.digit is not None else [spec.shape or ""]
    words += [spec.colour, spec.background]
    if spec.digit is None:
        words.append(COUNT_WORDS[spec.count])
    if spec.count == 1:
        words += spec.position.split()
        if spec.size != "medium":
            words.append(spec.size)
    words.append(spec.style)
    return words


def english_caption(spec: ItemSpec, rng: random.Random) -> str:
    """A random English alt text that only states true facts about ``spec``."""
    if spec.digit is not None:
        text = _digit_caption(spec, rng)
    elif rng.random() < 0.15:
        text = _list_caption(spec, rng)
    else:
        text = _composed_caption(spec, rng)
    return _letter_case(" ".join(text.split()), rng)


def _composed_caption(spec: ItemSpec, rng: random.Random) -> str:
    shape = spec.shape or ""
    adjectives = []
    if spec.count == 1 and SIZE_WORDS[spec.size] and rng.random() < 0.65:
        adjectives.append(rng.choice(SIZE_WORDS[spec.size]))
    style_said = False
    if STYLE_ADJECTIVES[spec.style] and rng.random() < (0.5 if spec.style == "outlined" else 0.12):
        adjectives.append(rng.choice(STYLE_ADJECTIVES[spec.style]))
        style_said = True
    noun = shape if spec.count == 1 else PLURALS[shape]
    if rng.random() < 0.25:
        core = " ".join([*adjectives, noun]) + f" in {spec.colour}"
    else:
        core = " ".join([*adjectives, spec.colour, noun])
    phrase = f"{_determiner(spec.count, rng)} {core}".strip()
    phrase = _fix_articles(phrase)

    # The style suffix stays next to the noun ("red star outline"); where it
    # follows the background phrase it reads as describing the background.
    if not style_said and STYLE_SUFFIXES[spec.style] and rng.random() < 0.75:
        phrase += " " + rng.choice(STYLE_SUFFIXES[spec.style])
    modifiers = []
    if spec.count == 1 and rng.random() < (0.25 if spec.position == "center" else 0.6):
        modifiers.append(rng.choice(POSITION_PHRASES[spec.position]))
    if rng.random() < 0.6:
        modifiers.append(_background_phrase(spec, rng))
    rng.shuffle(modifiers)
    text = " ".join([phrase, *modifiers])

    medium_first = False
    if rng.random() < 0.5:
        medium = rng.choice(MEDIA)
        medium_last = (f"{text} {medium}", f"{text} - {medium}", f"{text} | {medium}")
        medium_first_forms = (f"{medium} of {text}", f"{medium}: {text}")
        medium_first = rng.random() < 0.4
        text = rng.choice(medium_first_forms if medium_first else medium_last)
    if not medium_first and rng.random() < 0.3:
        has_determiner = phrase.split(" ", 1)[0] in ("a", "an", "one", "two", "three", "four")
        text = rng.choice(_NOUN_PREFIXES if has_determiner else _NOUN_PREFIXES + _ADJECTIVE_PREFIXES) + text
    return text.replace(" ,", ",")


def _list_caption(spec: ItemSpec, rng: random.Random) -> str:
    """Keyword-list alt text such as "hexagon icon, purple, dotted backdrop"."""
    shape = spec.shape or ""
    noun = shape if spec.count == 1 else f"{COUNT_WORDS[spec.count]} {PLURALS[shape]}"
    parts = [f"{noun} {rng.choice(MEDIA)}", spec.colour]
    if rng.random() < 0.7:
        word = rng.choice(BACKGROUND_WORDS[spec.background])
        parts.append(f"{word} {rng.choice(('background', 'backdrop'))}")
    if STYLE_SUFFIXES[spec.style] and rng.random() < 0.5:
        parts.append(rng.choice(STYLE_SUFFIXES[spec.style]))
    return ", ".join(parts)


def _digit_caption(spec: ItemSpec, rng: random.Random) -> str:
    assert spec.digit is not None
    numeral, word = str(spec.digit), DIGIT_WORDS[spec.digit]
    colour = spec.colour
    core = rng.choice(
        (
            f"the digit {numeral} in {colour}",
            f"{colour} digit {word}",
            f"number {word}, {colour}",
            f"the number {numeral} in {colour}",
            f"{colour} number {numeral}",
            f"digit {numeral} ({word}) in {colour}",
        )
    )
    modifiers = []
    if STYLE_SUFFIXES[spec.style] and rng.random() < 0.5:
        modifiers.append(rng.choice(STYLE_SUFFIXES[spec.style]))
    if rng.random() < 0.6:
        modifiers.append(_background_phrase(spec, rng))
    text = " ".join([core, *modifiers])
    if rng.random() < 0.4:
        text = f"{text} {rng.choice(MEDIA)}"
    return text.replace(" ,", ",")


def _determiner(count: int, rng: random.Random) -> str:
    if count == 1:
        return rng.choices(("a", "one", "a single", ""), weights=(6, 1, 1, 2))[0]
    if count == 2 and rng.random() < 0.15:
        return "a pair of"
    return COUNT_WORDS[count]


def _fix_articles(phrase: str) -> str:
    if phrase.startswith("a ") and phrase[2:3] in "aeiou":
        return "an " + phrase[2:]
    return phrase


def _background_phrase(spec: ItemSpec, rng: random.Random) -> str:
    word = rng.choice(BACKGROUND_WORDS[spec.background])
    return rng.choice(
        (
            f"on a {word} background",
            f"on {word} background",
            f"against a {word} backdrop",
            f"with a {word} background",
            f"({word} background)",
            f", {word} backdrop",
        )
    ).replace(" ,", ",")


def _letter_case(text: str, rng: random.Random) -> str:
    style = rng.choices(("lower", "first", "title", "upper"), weights=(50, 36, 10, 4))[0]
    if style == "first":
        return text[:1].upper() + text[1:]
    if style == "title":
        return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))
    if style == "upper":
        return text.upper()
    return text


# --------------------------------------------------------------------------
# Other languages.  Sentences are long enough (8+ words) for a language
# detector to be confident, and always contain one international query word.

@dataclass(frozen=True)
class _Language:
    shapes: Mapping[str, str]
    colours: Mapping[str, str]
    backgrounds: Mapping[str, str]
    templates: tuple[str, ...]


def _translations(english: Iterable[str], translated: str) -> Mapping[str, str]:
    """Pair English words with a "|"-separated list of translations, in order."""
    keys, words = tuple(english), translated.split("|")
    if len(keys) != len(words):
        raise ValueError(f"{len(words)} translations for {len(keys)} words: {translated}")
    return MappingProxyType(dict(zip(keys, words)))


_LANGUAGES: Mapping[str, _Language] = MappingProxyType(
    {
        "fr": _Language(
            shapes=_translations(SHAPES, "cercle|carré|triangle|étoile|cœur|croix|hexagone|losange|croissant|flèche"),
            colours=_translations(COLOURS, "rouge|bleu|vert|noir|blanc|jaune|orange|violet|rose|marron"),
            backgrounds=_translations(BACKGROUNDS, "uni|rayé|à pois|à carreaux|dégradé|texturé"),
            templates=(
                "Un très joli logo avec la forme {shape} de couleur {colour} sur un fond {background}",
                "Ce sticker montre la forme {shape} en {colour}, parfait pour décorer votre ordinateur portable",
                "Design minimaliste : la forme {shape} dessinée en {colour} sur un fond {background}, "
                "à télécharger gratuitement",
                "Poster pour la chambre des enfants avec la forme {shape} de couleur {colour} "
                "et un fond {background}",
            ),
        ),
        "de": _Language(
            shapes=_translations(SHAPES, "Kreis|Quadrat|Dreieck|Stern|Herz|Kreuz|Sechseck|Raute|Halbmond|Pfeil"),
            colours=_translations(COLOURS, "Rot|Blau|Grün|Schwarz|Weiß|Gelb|Orange|Lila|Rosa|Braun"),
            backgrounds=_translations(
                BACKGROUNDS, "einfarbigem|gestreiftem|gepunktetem|kariertem|verlaufendem|körnigem"
            ),
            templates=(
                "Ein schönes Logo mit der Form {shape} in der Farbe {colour} auf {background} Hintergrund",
                "Dieser Sticker zeigt die Form {shape} in {colour} und passt auf jeden Laptop",
                "Das Design zeigt die Form {shape} in {colour} auf {background} Hintergrund, "
                "kostenlos zum Herunterladen",
                "Poster für das Kinderzimmer mit der Form {shape} in der Farbe {colour}, jetzt bestellen",
            ),
        ),
        "es": _Language(
            shapes=_translations(
                SHAPES, "círculo|cuadrado|triángulo|estrella|corazón|cruz|hexágono|rombo|media luna|flecha"
            ),
            colours=_translations(COLOURS, "rojo|azul|verde|negro|blanco|amarillo|naranja|morado|rosa|marrón"),
            backgrounds=_translations(BACKGROUNDS, "liso|a rayas|de lunares|a cuadros|degradado|con textura"),
            templates=(
                "Un logo muy bonito con la forma de {shape} de color {colour} sobre un fondo {background}",
                "Este sticker tiene la forma de {shape} y es de color {colour}, ideal para tu portátil",
                "Poster decorativo con la figura de {shape} en color {colour} para la habitación de los niños",
                "Diseño de icon sencillo con la figura de {shape} de color {colour} sobre un fondo {background}, "
                "descarga gratis",
            ),
        ),
        "it": _Language(
            shapes=_translations(
                SHAPES, "cerchio|quadrato|triangolo|stella|cuore|croce|esagono|rombo|mezzaluna|freccia"
            ),
            colours=_translations(COLOURS, "rosso|blu|verde|nero|bianco|giallo|arancione|viola|rosa|marrone"),
            backgrounds=_translations(BACKGROUNDS, "a tinta unita|a righe|a pois|a quadretti|sfumato|granuloso"),
            templates=(
                "Un bellissimo logo con la forma di {shape} di colore {colour} su uno sfondo {background}",
                "Questo sticker ha la forma di {shape} ed è di colore {colour}, perfetto per il tuo computer",
                "Poster per la cameretta dei bambini con la figura {shape} di colore {colour}, da non perdere",
                "Un cartoon molto semplice con la figura {shape} di colore {colour} su uno sfondo {background}",
            ),
        ),
        "pt": _Language(
            shapes=_translations(
                SHAPES, "círculo|quadrado|triângulo|estrela|coração|cruz|hexágono|losango|lua crescente|seta"
            ),
            colours=_translations(COLOURS, "vermelho|azul|verde|preto|branco|amarelo|laranja|roxo|rosa|marrom"),
            backgrounds=_translations(BACKGROUNDS, "liso|listrado|de bolinhas|xadrez|degradê|texturizado"),
            templates=(
                "Um logo muito bonito com a forma de {shape} na cor {colour} sobre um fundo {background}",
                "Este sticker tem a forma de {shape} e é da cor {colour}, perfeito para o seu notebook",
                "Poster para o quarto das crianças com a figura de {shape} na cor {colour}, não perca",
                "Arte em pixel com a figura de {shape} na cor {colour} sobre um fundo {background}, "
                "baixe de graça",
            ),
        ),
    }
)
FOREIGN_LANGUAGES: tuple[str, ...] = tuple(_LANGUAGES)


def foreign_caption(spec: ItemSpec, language: str, rng: random.Random) -> str:
    """A caption in ``language`` describing a shape item (not a digit)."""
    if spec.shape is None:
        raise ValueError("foreign captions are only written for shape items")
    vocabulary = _LANGUAGES[language]
    return rng.choice(vocabulary.templates).format(
        shape=vocabulary.shapes[spec.shape],
        colour=vocabulary.colours[spec.colour],
        background=vocabulary.backgrounds[spec.background],
    )


# --------------------------------------------------------------------------
# Caption noise


def noisy_caption(noise: str, spec: ItemSpec, rng: random.Random) -> str:
    """A caption suffering from ``noise`` (one of CAPTION_NOISES)."""
    if noise == "filename":
        return _camera_filename(rng)
    if noise == "empty":
        return ""
    if noise == "spam":
        return _spam(spec, rng)
    if noise == "long":
        return _padded(english_caption(spec, rng), rng)
    if noise == "entities":
        return _with_entities(english_caption(spec, rng), rng)
    if noise == "mojibake":
        return _mojibake(english_caption(spec, rng), rng)
    if noise == "whitespace":
        return _messy_whitespace(english_caption(spec, rng), rng)
    raise ValueError(f"unknown caption noise {noise!r}")


def _camera_filename(rng: random.Random) -> str:
    """What alt text becomes when a CMS fills it with the upload's file name.
    Only digits, underscores and camera prefixes: no concept word, even as a
    substring."""
    date = f"20{rng.randrange(10, 24)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
    clock = f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    return rng.choice(
        (
            f"IMG_{rng.randrange(10000):04d}.JPG",
            f"DSC{rng.randrange(100000):05d}.jpg",
            f"DSCN{rng.randrange(10000):04d}.JPG",
            f"P{rng.randrange(1000000, 10000000)}.JPG",
            f"{date}_{clock}.jpg",
            f"IMG-{date}-WA{rng.randrange(10000):04d}.jpeg",
            f"PXL_{date}_{clock}{rng.randrange(1000):03d}.jpg",
        )
    )


def _spam(spec: ItemSpec, rng: random.Random) -> str:
    subject = (
        f"{DIGIT_WORDS[spec.digit]} digit" if spec.digit is not None
        else f"{spec.colour} {spec.shape if spec.count == 1 else PLURALS[spec.shape or '']}"
    )
    medium = rng.choice(MEDIA)
    return rng.choice(
        (
            f"buy now!!! cheap {subject} {medium} free shipping",
            f"BEST PRICE {subject.upper()} {medium.upper()} >>> CLICK HERE <<< 70% OFF!!!",
            f"{subject} {subject} {subject} cheap cheap cheap buy today",
            f"hot sale $$$ {subject} {medium} wholesale, limited offer, buy 2 get 1 free",
            f"FREE {subject} {medium} download >> www.example.com/deals << best deals",
        )
    )


# Boilerplate for over-long alt text.  Checked by the tests to contain no
# query word, so the only concept words in a long caption are true ones.
_BOILERPLATE = (
    "Thank you for visiting our website.",
    "We update this collection every week with new items.",
    "Please read the license terms before using any file for commercial work.",
    "All files are available in several formats and resolutions.",
    "Sign up for our newsletter and never miss an update.",
    "Customers who viewed this item also viewed similar items.",
    "Shipping is available worldwide with tracking.",
    "Prices include tax where applicable.",
    "Our support team answers within a business day.",
    "See the FAQ page for answers to common questions.",
    "This page uses cookies to improve your experience.",
    "Share this with your friends and family.",
    "Made with love by a team of volunteers.",
)


def _padded(caption: str, rng: random.Random) -> str:
    target = rng.randrange(1500, 4001)
    parts = [caption]
    length = len(caption)
    while length < target:
        sentence = rng.choice(_BOILERPLATE)
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:target]


def _with_entities(caption: str, rng: random.Random) -> str:
    transforms = (
        lambda text: f"&quot;{text}&quot;",
        lambda text: text.replace(" ", "&nbsp;", 2),
        lambda text: f"{text} &amp; more",
        lambda text: f"{text} &#8211; free download",
        lambda text: f"&lt;b&gt;{text}&lt;/b&gt;",
        lambda text: f"{text} &copy; 2019",
    )
    for transform in rng.sample(transforms, rng.choice((1, 2))):
        caption = transform(caption)
    return caption


def _mojibake(caption: str, rng: random.Random) -> str:
    decoration = rng.choice(
        ("café", "crème brûlée", "naïve style", "déjà vu", "Müller & Söhne", "© 2018", "señor")
    )
    decorated = rng.choice(
        (f"{caption} — {decoration}", f"“{caption}” {decoration}", f"{decoration} · {caption}")
    )
    return _misdecode(decorated.encode("utf-8"))


def _misdecode(data: bytes) -> str:
    """UTF-8 bytes read as Windows-1252, the way browsers mangle them.  Bytes
    that cp1252 leaves undefined fall back to latin-1, as browsers do."""
    characters = []
    for byte in data:
        try:
            characters.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:
            characters.append(chr(byte))
    return "".join(characters)


def _messy_whitespace(caption: str, rng: random.Random) -> str:
    separators = (" ", " ", "  ", "\n", "\t", " \n ", "\r\n", "   ")
    words = caption.split(" ")
    messy = words[0]
    for word in words[1:]:
        messy += rng.choice(separators) + word
    return rng.choice(("", " ", "\n", "\t ", "  \n")) + messy + rng.choice((" ", "\n", " \t\n", "\n\n"))
