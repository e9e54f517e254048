"""Realistic, seeded test data for `openwit curate`: a query table and alt-text candidate lists.

    .venv/bin/python benchmarks/curate_data.py --output DIR [--queries 500000]
        [--candidates 1000000] [--seed 0]

or, from Python, `generate(output_dir, num_queries, num_candidates, seed)` -> paths.

`queries.parquet` (columns `id`, `query`; distinct, case-folded, sorted, `id` = row) is built
like the CLIP paper's list as far as offline sources allow: every word of wordfreq's English
`large` list (~320k), every WordNet 3.0 lemma (read from /usr/share/wordnet/data.*, `_` ->
space), then the most frequent bigrams of the caption generator's own English word chain
(content words only, so they read like the paper's high-PMI bigrams) until `num_queries`
distinct strings are reached. With fewer queries than the two word sources hold, each source
keeps its share of the full-size list (its most frequent words; a seeded sample of lemmas).

`candidates.parquet` (columns `url`, `caption`; row groups of 50,000) holds alt-text-like
captions as LAION / CC alt texts look; `candidates-100k.parquet` is its first 100,000 rows.
Caption kinds (share of rows):

- free text (~43%): a word chain over wordfreq's 30,000 commonest English words (each word
  has 24 possible successors drawn by frequency to the power 0.7, so collocations recur), 3-15 words mostly
  with a long tail (log-normal length), in sentence case, lower case, Title Case or CAPS;
- photo templates (16%): "<adj> <noun> on <colour> background", "Close-up of ...",
  "Vector illustration of ..."; product titles (14%): brand-like tokens, colours,
  materials and sizes ("Velmora Men's Blue Cotton T-Shirt Size XL"); stock-photo phrasing
  (10%): "Young woman smiling at camera, stock photo";
- file names (4%): "IMG_2041.jpg", "DSC00123"; numbers, prices and dates (2%);
- non-English (9%): French, German, Spanish, Italian, Portuguese, Dutch from
  `wordfreq.top_n_list(lang, 20000)` with Zipf weights, a few Russian, Chinese, Japanese;
- empty (1%) and long captions of 300+ characters (0.5%).

On top: HTML entities (&amp;, &quot;, &#39;) in ~2% of captions, accented words (café, naïve)
and symbols (×, ★) in some templates, ~2% of rows repeating an earlier row's URL. URLs look like
`https://img{n}.example-cdn.com/path/{hash}.jpg` and are never fetched.

Everything is drawn with numpy from one seed, so a seed gives the same files byte for byte.
A `manifest.json` beside the files records the sizes, seed and generator version; `generate`
reuses files whose manifest matches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import unicodedata

import numpy as np

GENERATOR_VERSION = 2
ROW_GROUP_SIZE = 50_000
WORDNET_FOLDER = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
DEFAULT_QUERIES = 500_000
DEFAULT_CANDIDATES = 1_000_000

ENGLISH_VOCABULARY = 30_000
SUCCESSORS = 24
CHAIN_EXPONENT = 0.7
STOP_RANKS = 150  # the commonest words: not part of a bigram query
MAX_FREE_WORDS = 40
LONG_MIN_CHARS = 300

FOREIGN = {  # language: share of all captions
    "fr": 0.020, "de": 0.020, "es": 0.018, "it": 0.010, "pt": 0.010, "nl": 0.007,
    "ru": 0.0025, "zh": 0.0015, "ja": 0.001,
}
KINDS = {  # kind: share of all captions; "free" takes the rest
    "empty": 0.01, "long": 0.005, "foreign": sum(FOREIGN.values()), "filename": 0.04,
    "numeric": 0.02, "product": 0.14, "stock": 0.10, "template": 0.16,
}
KINDS["free"] = 1.0 - sum(KINDS.values())
ENTITY_RATE = 0.02
REPEATED_URL_RATE = 0.02

COLOURS = ["black", "white", "red", "blue", "green", "yellow", "grey", "gray", "pink", "purple",
           "orange", "brown", "beige", "navy", "gold", "silver", "turquoise", "olive", "cream",
           "burgundy", "teal", "charcoal", "ivory", "coral", "mint", "khaki", "multicolor"]
MATERIALS = ["Cotton", "Leather", "Wool", "Linen", "Silk", "Denim", "Polyester", "Stainless Steel",
             "Wooden", "Ceramic", "Glass", "Bamboo", "Velvet", "Cashmere", "Suede", "Nylon"]
PRODUCTS = ["T-Shirt", "Hoodie", "Sneakers", "Dress", "Jacket", "Backpack", "Watch", "Sofa",
            "Coffee Table", "Lamp", "Phone Case", "Headphones", "Mug", "Water Bottle", "Jeans",
            "Boots", "Handbag", "Wallet", "Sunglasses", "Rug", "Curtains", "Pillow Cover",
            "Laptop Sleeve", "Necklace", "Earrings", "Ring", "Candle", "Vase", "Shorts", "Scarf",
            "Beanie", "Blender", "Frying Pan", "Desk Chair", "Bookshelf", "Duvet Cover"]
AUDIENCES = ["Men's", "Women's", "Kids'", "Unisex", "Girls'", "Boys'", "Baby"]
SIZES = ["XS", "S", "M", "L", "XL", "XXL", "3XL", "One Size", "EU 42", "US 9", "UK 8", "10.5"]
UNITS = ["ml", "oz", "cm", "mm", "inch", "in", "kg", "lb", "L", "pcs", "pack", "GB", "W"]
PEOPLE = ["Young woman", "Young man", "Senior man", "Senior woman", "Happy family",
          "Business people", "Little girl", "Little boy", "Teenage girl", "Smiling woman",
          "Couple", "Group of friends", "Doctor", "Chef", "Businessman", "Mother and daughter",
          "Father and son", "Female student", "Hipster man", "Woman"]
ACTIONS = ["smiling at camera", "working on laptop", "drinking coffee", "talking on the phone",
           "walking in the park", "cooking in the kitchen", "reading a book", "running on beach",
           "holding a cup", "sitting on sofa", "looking away", "laughing together",
           "shopping online", "doing yoga", "riding a bicycle", "taking a selfie",
           "having breakfast", "pointing at copy space", "with shopping bags", "in the office"]
PLACES = ["at home", "in the city", "outdoors", "in studio", "at sunset", "in the office",
          "on white background", "in a cafe", "in the café", "in nature", "at the beach"]
STOCK_SUFFIXES = [", stock photo", " - stock photo", " stock image", " royalty free stock photo",
                  " | Stock Photography", " - Stock Image", ", stock vector", " Stock Photo - Alamy",
                  " premium photo", ""]
TEMPLATES = [
    "{adj} {noun} on {colour} background",
    "{noun} isolated on white background",
    "Close-up of {adj} {noun}",
    "{adj} {noun} and {noun2} in the {noun3}",
    "Vector illustration of {adj} {noun}",
    "Aerial view of {noun} at sunset",
    "{noun} with {adj} {noun2}",
    "Top view of {noun} on {adj} table",
    "{colour} {noun} icon",
    "Portrait of a {adj} {noun}",
    "{adj} {noun} in {noun2}",
    "The {noun} of the {noun2}",
    "{noun} {noun2} ideas",
    "How to make {adj} {noun}",
    "{adj} {noun}, {adj2} {noun2}",
    "Beautiful {noun} in the {noun2}",
    "{noun} {noun2} wallpaper",
    "Watercolor {noun} clipart",
]
ACCENTED = ["café", "naïve", "résumé", "jalapeño", "crème brûlée", "Pokémon", "façade", "entrée",
            "piñata", "São Paulo", "Zürich", "fiancée", "déjà vu", "Ångström", "Brontë",
            "crêpe", "smörgåsbord", "Björk", "açaí bowl", "rosé"]
SYMBOLS = ["×", "★★★★★", "–", "™", "®", "°", "½", "→", "❤", "©"]
FILE_PATTERNS = ["IMG_{n4}.jpg", "IMG_{n4}.JPG", "DSC{n5}", "DSC_{n4}.JPG", "P{n7}.JPG",
                 "image ({n1}).jpg", "photo-{n6}.png", "Screenshot {date} at {time}",
                 "{hex8}.jpg", "untitled-{n2}", "{n8}_{n6}_n.jpg", "WhatsApp Image {date} at {time}",
                 "DCIM{n4}", "GOPR{n4}.JPG", "MVIMG_{date8}_{n6}.jpg", "thumbnail"]
CURRENCIES = ["$", "€", "£", "USD ", ""]


# --------------------------------------------------------------------------- sources


def wordnet_lemmas(folder: str = WORDNET_FOLDER) -> dict[str, set[str]]:
    """Every lemma of the four data files, case-folded, `_` -> space, by part of speech."""
    marker = re.compile(r"\((?:a|p|ip)\)$")
    lemmas: dict[str, set[str]] = {}
    for name in WORDNET_FILES:
        found: set[str] = set()
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or not line.strip():
                    continue  # the licence header
                fields = line.split(" ")
                count = int(fields[3], 16)
                for word in fields[4:4 + 2 * count:2]:
                    found.add(marker.sub("", word).replace("_", " ").casefold())
        lemmas[name.split(".")[1]] = found
    return lemmas


def clean_query(text: str) -> str:
    """Case-folded, NFC, stripped; "" for the few strings (polytonic Greek) whose NFC form is
    not case-folded, so every query is both NFC and case-folded."""
    text = unicodedata.normalize("NFC", text.casefold()).strip()
    return text if text == text.casefold() else ""


class EnglishChain:
    """wordfreq's commonest English words and a successor table (a first-order word chain)."""

    def __init__(self, rng, frequencies: dict[str, float]):
        words = [(w, f) for w, f in frequencies.items() if w.isalpha()][:ENGLISH_VOCABULARY]
        self.words = np.array([w for w, _ in words], dtype=object)
        # Flatter than running text (exponent 0.7): alt texts are mostly content words.
        weight = np.array([f for _, f in words]) ** CHAIN_EXPONENT
        self.p = weight / weight.sum()
        self.cdf = np.cumsum(self.p)
        self.successors = self.sample_ids(rng, (len(words), SUCCESSORS))
        selves = self.successors == np.arange(len(words))[:, None]
        self.successors[selves] = (self.successors[selves] + 1) % len(words)
        q = 1.0 / np.arange(1, SUCCESSORS + 1)
        self.q = q / q.sum()
        self.q_cdf = np.cumsum(self.q)

    def sample_ids(self, rng, shape):
        return np.minimum(np.searchsorted(self.cdf, rng.random(shape)), len(self.p) - 1)

    def chains(self, rng, count: int, length: int) -> np.ndarray:
        ids = np.empty((count, length), dtype=np.int32)
        ids[:, 0] = self.sample_ids(rng, count)
        for position in range(1, length):
            pick = np.minimum(np.searchsorted(self.q_cdf, rng.random(count)), SUCCESSORS - 1)
            ids[:, position] = self.successors[ids[:, position - 1], pick]
        return ids

    def bigrams(self):
        """Content-word bigrams of the chain, most frequent first."""
        score = self.p[:, None] * self.q[None, :]
        first = np.repeat(np.arange(len(self.p)), SUCCESSORS)
        second = self.successors.reshape(-1)
        score = score.reshape(-1)
        keep = (first >= STOP_RANKS) & (second >= STOP_RANKS) & (first != second)
        first, second, score = first[keep], second[keep], score[keep]
        order = np.argsort(-score, kind="stable")
        seen = set()
        for a, b in zip(first[order].tolist(), second[order].tolist()):
            if (a, b) not in seen:
                seen.add((a, b))
                yield f"{self.words[a]} {self.words[b]}"


def build_queries(rng, chain: EnglishChain, frequencies: dict[str, float],
                  lemmas: dict[str, set[str]], num_queries: int) -> list[str]:
    freq_words: dict[str, None] = {}
    for word in frequencies:  # most frequent first
        word = clean_query(word)
        if word:
            freq_words.setdefault(word, None)
    wordnet_only = sorted({clean_query(w) for pos in lemmas.values() for w in pos}
                          - set(freq_words) - {""})
    words, extra = list(freq_words), wordnet_only
    if num_queries < len(words) + len(extra):
        # Keep each source's share of the full-size list: bigrams fill the rest of it.
        full = max(DEFAULT_QUERIES, len(words) + len(extra))
        n_words = round(num_queries * len(words) / full)
        n_extra = round(num_queries * len(extra) / full)
        words = words[:n_words]
        extra = [extra[i] for i in np.sort(rng.choice(len(extra), n_extra, replace=False))]
    chosen = set(words) | set(extra)
    for bigram in chain.bigrams():
        if len(chosen) >= num_queries:
            break
        bigram = clean_query(bigram)
        if bigram:
            chosen.add(bigram)
    if len(chosen) < num_queries:
        raise ValueError(f"only {len(chosen)} distinct queries available, {num_queries} asked")
    return sorted(chosen)


# --------------------------------------------------------------------------- captions


class Vocabulary:
    def __init__(self, frequencies: dict[str, float], lemmas: dict[str, set[str]]):
        top = [(w, f) for w, f in list(frequencies.items())[:60_000] if w.isalpha() and len(w) > 2]
        nouns = [(w, f) for w, f in top if w in lemmas["noun"]]
        adjectives = [(w, f) for w, f in top if w in lemmas["adj"]]
        self.nouns, self.noun_cdf = self._weighted(nouns[:20_000])
        self.adjectives, self.adj_cdf = self._weighted(adjectives[:8_000])

    @staticmethod
    def _weighted(pairs):
        words = np.array([w for w, _ in pairs], dtype=object)
        weight = np.array([f for _, f in pairs]) ** 0.8  # flatter than text: content words
        return words, np.cumsum(weight / weight.sum())

    @staticmethod
    def _pick(rng, words, cdf, count):
        return words[np.minimum(np.searchsorted(cdf, rng.random(count)), len(words) - 1)]

    def nouns_(self, rng, count):
        return self._pick(rng, self.nouns, self.noun_cdf, count)

    def adjectives_(self, rng, count):
        return self._pick(rng, self.adjectives, self.adj_cdf, count)


def apply_case(rng, texts: list[str], shares=(0.55, 0.25, 0.12, 0.04)) -> list[str]:
    """Sentence case, lower, Title Case, CAPS (the rest stays as it is)."""
    style = np.searchsorted(np.cumsum(shares), rng.random(len(texts)))
    out = []
    for text, s in zip(texts, style.tolist()):
        if s == 0:
            text = text[:1].upper() + text[1:]
        elif s == 1:
            text = text.lower()
        elif s == 2:
            text = text.title()
        elif s == 3:
            text = text.upper()
        out.append(text)
    return out


def free_captions(rng, chain: EnglishChain, count: int) -> list[str]:
    lengths = np.clip(np.rint(rng.lognormal(2.0, 0.55, count)), 1, MAX_FREE_WORDS).astype(int)
    ids = chain.chains(rng, count, MAX_FREE_WORDS)
    rows = chain.words[ids]
    ending = rng.choice(["", ".", "", "!", " -", "...", ""], count).tolist()
    comma = rng.random(count) < 0.15
    texts = []
    for row, n, end, c in zip(rows, lengths.tolist(), ending, comma.tolist()):
        words = row[:n].tolist()
        if c and n > 4:
            words[n // 2] += ","
        texts.append(" ".join(words) + end)
    return apply_case(rng, texts)


def long_captions(rng, chain: EnglishChain, count: int) -> list[str]:
    texts = []
    for row in chain.words[chain.chains(rng, count, 120)]:
        words = row.tolist()
        sentences = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, 120, 12)]
        text = " ".join(sentences[:int(rng.integers(6, 11))])
        while len(text) < LONG_MIN_CHARS:
            text += " " + sentences[-1]
        texts.append(text)
    return texts


def template_captions(rng, vocab: Vocabulary, count: int) -> list[str]:
    template = rng.integers(0, len(TEMPLATES), count).tolist()
    noun, noun2, noun3 = (vocab.nouns_(rng, count).tolist() for _ in range(3))
    adj, adj2 = (vocab.adjectives_(rng, count).tolist() for _ in range(2))
    colour = rng.choice(COLOURS, count).tolist()
    accented = rng.random(count) < 0.03
    accent = rng.choice(ACCENTED, count).tolist()
    texts = []
    for i in range(count):
        n = accent[i] if accented[i] else noun[i]
        texts.append(TEMPLATES[template[i]].format(
            adj=adj[i], adj2=adj2[i], noun=n, noun2=noun2[i], noun3=noun3[i], colour=colour[i]))
    return apply_case(rng, texts, shares=(0.6, 0.2, 0.15, 0.03))


def brand_names(rng, count: int) -> list[str]:
    onsets = ["b", "br", "c", "d", "f", "g", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
              "tr", "v", "z", "x", "qu", "h"]
    vowels = ["a", "e", "i", "o", "u", "ia", "ea", "y"]
    codas = ["", "n", "r", "x", "s", "l", "m", "tt", "ck", "nd"]
    brands = []
    for _ in range(count):
        syllables = int(rng.integers(2, 4))
        name = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        name += rng.choice(codas)
        r = rng.random()
        brands.append(name.upper() if r < 0.2 else name.capitalize())
    return brands


def product_captions(rng, vocab: Vocabulary, count: int) -> list[str]:
    brands = np.array(brand_names(rng, 3_000), dtype=object)
    # Brands are Zipf-distributed too: a few big ones, a long tail.
    weight = 1.0 / np.arange(1, len(brands) + 1)
    brand = brands[np.searchsorted(np.cumsum(weight / weight.sum()), rng.random(count))
                   .clip(0, len(brands) - 1)].tolist()
    form = rng.integers(0, 7, count).tolist()
    audience = rng.choice(AUDIENCES, count).tolist()
    colour = [c.capitalize() for c in rng.choice(COLOURS, count).tolist()]
    material = rng.choice(MATERIALS, count).tolist()
    product = rng.choice(PRODUCTS, count).tolist()
    size = rng.choice(SIZES, count).tolist()
    unit = rng.choice(UNITS, count).tolist()
    number = rng.integers(1, 1000, count).tolist()
    model = rng.integers(10, 9999, count).tolist()
    noun = vocab.nouns_(rng, count).tolist()
    adj = vocab.adjectives_(rng, count).tolist()
    price = (rng.integers(1, 500, count) + rng.choice([0.99, 0.49, 0.0, 0.95], count)).tolist()
    currency = rng.choice(CURRENCIES, count).tolist()
    symbol = rng.choice(SYMBOLS, count).tolist()
    texts = []
    for i in range(count):
        f = form[i]
        if f == 0:
            t = f"{brand[i]} {audience[i]} {colour[i]} {material[i]} {product[i]} Size {size[i]}"
        elif f == 1:
            t = f"{brand[i]} {product[i]} {number[i]}{unit[i]} - {colour[i]}"
        elif f == 2:
            t = f"Set of {number[i] % 12 + 2} {adj[i].capitalize()} {noun[i].capitalize()}s"
        elif f == 3:
            t = f"{brand[i]} {brand[i][:2].upper()}-{model[i]} {product[i]} ({colour[i]})"
        elif f == 4:
            t = (f"{audience[i]} {material[i]} {product[i]} {symbol[i]} "
                 f"{number[i] % 40 + 10} {symbol[i] if symbol[i] == '×' else 'x'} "
                 f"{number[i] % 60 + 20} {unit[i]}")
        elif f == 5:
            t = f"{product[i]} {colour[i]} & {material[i]} | {brand[i]} | {currency[i]}{price[i]:.2f}"
        else:
            t = f"NEW {brand[i].upper()} {product[i].upper()} {size[i]} {colour[i].upper()}"
        texts.append(t)
    return texts


def stock_captions(rng, vocab: Vocabulary, count: int) -> list[str]:
    person = rng.choice(PEOPLE, count).tolist()
    action = rng.choice(ACTIONS, count).tolist()
    place = rng.choice(PLACES, count).tolist()
    suffix = rng.choice(STOCK_SUFFIXES, count).tolist()
    with_place = (rng.random(count) < 0.5).tolist()
    adj = vocab.adjectives_(rng, count).tolist()
    noun = vocab.nouns_(rng, count).tolist()
    form = rng.integers(0, 4, count).tolist()
    texts = []
    for i in range(count):
        if form[i] == 3:
            core = f"{adj[i].capitalize()} {noun[i]} {place[i]}"
        else:
            core = f"{person[i]} {action[i]}" + (f" {place[i]}" if with_place[i] else "")
        texts.append(core + suffix[i])
    return texts


def filename_captions(rng, count: int) -> list[str]:
    pattern = rng.choice(FILE_PATTERNS, count).tolist()
    digits = rng.integers(0, 10**8, count).tolist()
    year = rng.integers(2008, 2025, count).tolist()
    month = rng.integers(1, 13, count).tolist()
    day = rng.integers(1, 29, count).tolist()
    texts = []
    for i in range(count):
        d = digits[i]
        texts.append(pattern[i].format(
            n1=d % 20 + 1, n2=d % 100, n4=f"{d % 10**4:04d}", n5=f"{d % 10**5:05d}",
            n6=d % 10**6, n7=f"{d % 10**7:07d}", n8=d, hex8=f"{d:08x}",
            date=f"{year[i]}-{month[i]:02d}-{day[i]:02d}", date8=f"{year[i]}{month[i]:02d}{day[i]:02d}",
            time=f"{d % 24}.{d % 60:02d}.{d % 59:02d}"))
    return texts


def numeric_captions(rng, vocab: Vocabulary, count: int) -> list[str]:
    form = rng.integers(0, 8, count).tolist()
    a = rng.integers(1, 100, count).tolist()
    year = rng.integers(1950, 2025, count).tolist()
    noun = vocab.nouns_(rng, count).tolist()
    currency = rng.choice(CURRENCIES, count).tolist()
    texts = []
    for i in range(count):
        f = form[i]
        texts.append([
            str(year[i]), f"{a[i] % 12 + 1} of {a[i] % 12 + 13}", f"Page {a[i]}",
            f"100% {noun[i]}", f"{currency[i]}{a[i]}.99", f"{year[i]} {noun[i]}",
            f"{a[i]}", f"#{a[i]} {noun[i].upper()}"][f])
    return texts


def foreign_captions(rng, count: int, shares: dict[str, float]) -> list[str]:
    import wordfreq

    languages = list(shares)
    p = np.array([shares[l] for l in languages])
    language = rng.choice(len(languages), count, p=p / p.sum())
    texts: list[str | None] = [None] * count
    for index, lang in enumerate(languages):
        rows = np.flatnonzero(language == index)
        if not len(rows):
            continue
        words = np.array(wordfreq.top_n_list(lang, 20_000), dtype=object)
        weight = 1.0 / np.arange(1, len(words) + 1)
        cdf = np.cumsum(weight / weight.sum())
        lengths = np.clip(np.rint(rng.lognormal(1.9, 0.5, len(rows))), 2, 30).astype(int)
        ids = np.minimum(np.searchsorted(cdf, rng.random((len(rows), 30))), len(words) - 1)
        joiner = "" if lang in ("zh", "ja") else " "
        for row, n, chosen in zip(rows.tolist(), lengths.tolist(), words[ids]):
            text = joiner.join(chosen[:n].tolist())
            texts[row] = text[:1].upper() + text[1:]
    return texts


def add_entities(rng, captions: list[str]) -> None:
    """&amp; / &quot; / &#39; in ~ENTITY_RATE of the non-empty captions, in place."""
    rows = np.flatnonzero(rng.random(len(captions)) < ENTITY_RATE).tolist()
    kind = rng.integers(0, 4, len(rows)).tolist()
    for row, k in zip(rows, kind):
        text = captions[row]
        if not text:
            continue
        if k == 0:
            text = text.replace(" and ", " &amp; ").replace(" & ", " &amp; ")
            if "&amp;" not in text:
                text += " &amp; more"
        elif k == 1:
            text = f"&quot;{text}&quot;"
        elif k == 2:
            text = text.replace("'", "&#39;") if "'" in text else f"{text} &#39;{text.split()[0]}&#39;"
        else:
            text = text.replace(" ", " &nbsp;", 1)
        captions[row] = text


def make_urls(rng, count: int) -> list[str]:
    host = rng.integers(0, 10, count).tolist()
    hashes = rng.integers(0, 2**63, count, dtype=np.int64).tolist()
    year = rng.integers(2010, 2025, count).tolist()
    path = rng.integers(0, 4, count).tolist()
    ext = rng.choice(["jpg"] * 14 + ["jpeg", "png", "png", "webp", "JPG", "gif"], count).tolist()
    urls = []
    for i in range(count):
        p = ("path", f"images/{year[i]}/{hashes[i] % 12 + 1:02d}", "uploads/products",
             f"photos/{hashes[i] % 997}")[path[i]]
        urls.append(f"https://img{host[i]}.example-cdn.com/{p}/{hashes[i]:016x}.{ext[i]}")
    repeated = np.flatnonzero(rng.random(count) < REPEATED_URL_RATE)
    repeated = repeated[repeated > 0]
    sources = (rng.random(len(repeated)) * repeated).astype(np.int64)
    for row, source in zip(repeated.tolist(), sources.tolist()):
        urls[row] = urls[source]
    return urls


def build_candidates(rng, chain: EnglishChain, vocab: Vocabulary, count: int):
    kinds = list(KINDS)
    kind = rng.choice(len(kinds), count, p=np.array([KINDS[k] for k in kinds]))
    captions: list[str] = [""] * count
    makers = {
        "empty": lambda n: [""] * n,
        "long": lambda n: long_captions(rng, chain, n),
        "foreign": lambda n: foreign_captions(rng, n, FOREIGN),
        "filename": lambda n: filename_captions(rng, n),
        "numeric": lambda n: numeric_captions(rng, vocab, n),
        "product": lambda n: product_captions(rng, vocab, n),
        "stock": lambda n: stock_captions(rng, vocab, n),
        "template": lambda n: template_captions(rng, vocab, n),
        "free": lambda n: free_captions(rng, chain, n),
    }
    for index, name in enumerate(kinds):
        rows = np.flatnonzero(kind == index)
        for row, text in zip(rows.tolist(), makers[name](len(rows))):
            captions[row] = text
    add_entities(rng, captions)
    return make_urls(rng, count), captions


# --------------------------------------------------------------------------- files


def _paths(output_dir: str) -> dict[str, str]:
    return {name: os.path.join(output_dir, f"{name}.parquet")
            for name in ("queries", "candidates", "candidates-100k")} | {
        "manifest": os.path.join(output_dir, "manifest.json")}


def _manifest(num_queries: int, num_candidates: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_queries": num_queries,
            "num_candidates": num_candidates, "seed": seed, "row_group_size": ROW_GROUP_SIZE}


def _cached(paths: dict[str, str], manifest: dict) -> bool:
    try:
        with open(paths["manifest"]) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return False
    if {k: stored.get(k) for k in manifest} != manifest:
        return False
    files = stored.get("files", {})
    return all(os.path.exists(paths[name]) and os.path.getsize(paths[name]) == files.get(name)
               for name in ("queries", "candidates", "candidates-100k"))


def generate(output_dir: str, num_queries: int = DEFAULT_QUERIES,
             num_candidates: int = DEFAULT_CANDIDATES, seed: int = 0,
             verbose: bool = False) -> dict[str, str]:
    """Write (or reuse) queries.parquet, candidates.parquet and candidates-100k.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import wordfreq

    os.makedirs(output_dir, exist_ok=True)
    paths = _paths(output_dir)
    manifest = _manifest(num_queries, num_candidates, seed)
    if _cached(paths, manifest):
        if verbose:
            print(f"reusing {output_dir} (manifest matches)", flush=True)
        return paths
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    frequencies = wordfreq.get_frequency_dict("en", "large")
    lemmas = wordnet_lemmas()
    chain = EnglishChain(rng, frequencies)
    vocab = Vocabulary(frequencies, lemmas)

    queries = build_queries(rng, chain, frequencies, lemmas, num_queries)
    pq.write_table(pa.table({"id": pa.array(range(len(queries)), pa.int64()),
                             "query": pa.array(queries, pa.string())}),
                   paths["queries"] + ".tmp")
    os.replace(paths["queries"] + ".tmp", paths["queries"])
    if verbose:
        print(f"queries: {len(queries):,} in {time.monotonic() - started:.1f} s", flush=True)

    urls, captions = build_candidates(rng, chain, vocab, num_candidates)
    table = pa.table({"url": pa.array(urls, pa.string()), "caption": pa.array(captions, pa.string())})
    for name, rows in (("candidates", table), ("candidates-100k", table.slice(0, 100_000))):
        pq.write_table(rows, paths[name] + ".tmp", row_group_size=ROW_GROUP_SIZE)
        os.replace(paths[name] + ".tmp", paths[name])
    manifest["files"] = {name: os.path.getsize(paths[name])
                         for name in ("queries", "candidates", "candidates-100k")}
    manifest["seconds"] = round(time.monotonic() - started, 1)
    with open(paths["manifest"], "w") as f:
        json.dump(manifest, f, indent=1)
    if verbose:
        print(f"candidates: {num_candidates:,}; total {manifest['seconds']} s", flush=True)
    return paths


def first_rows(source: str, rows: int, destination: str) -> str:
    """`destination` = the first `rows` rows of `source` (row groups of 50,000), reused if there."""
    import pyarrow.parquet as pq

    if os.path.exists(destination) and pq.ParquetFile(destination).metadata.num_rows == rows \
            and os.path.getmtime(destination) >= os.path.getmtime(source):
        return destination
    table = pq.read_table(source)
    if table.num_rows < rows:
        raise ValueError(f"{source} has {table.num_rows} rows, {rows} asked")
    pq.write_table(table.slice(0, rows), destination + ".tmp", row_group_size=ROW_GROUP_SIZE)
    os.replace(destination + ".tmp", destination)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES)
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=25, help="sample rows to print")
    args = parser.parse_args()

    started = time.monotonic()
    paths = generate(args.output, args.queries, args.candidates, args.seed, verbose=True)
    print(f"done in {time.monotonic() - started:.1f} s: " +
          ", ".join(f"{k}={v}" for k, v in paths.items()))

    import pyarrow.parquet as pq

    table = pq.read_table(paths["candidates"], columns=["url", "caption"])
    rng = np.random.default_rng(1)
    rows = sorted(rng.choice(table.num_rows, min(args.samples, table.num_rows), replace=False))
    urls, captions = table.column("url"), table.column("caption")
    print("\nsample candidates:")
    for row in rows:
        print(f"  {urls[int(row)].as_py()}  {captions[int(row)].as_py()!r}")
    queries = pq.read_table(paths["queries"]).column("query")
    rows = sorted(rng.choice(len(queries), min(args.samples, len(queries)), replace=False))
    print("\nsample queries:", ", ".join(repr(queries[int(r)].as_py()) for r in rows))


if __name__ == "__main__":
    main()
