"""pipeline.langid.LanguageIdentifier gives plain seeded langdetect's answers."""

from __future__ import annotations

import functools
import math
import operator
import random
import unicodedata

import numpy as np

import pytest

langdetect = pytest.importorskip("langdetect")


import openwit.pipeline.text.langid as langid  # noqa: E402
from openwit.pipeline.text.langid import LanguageIdentifier  # noqa: E402

SEED = 0

try:
    import numba  # noqa: F401

    ENGINES = ["numba", "numpy"]
except ImportError:  # the numpy replay is the fallback; the numba engine is not tested
    ENGINES = ["numpy"]

WORDS = {
    "en": "the a of and with on in at for dog cat house garden red blue green small large "
    "old new woman man child children playing running sitting beach mountain river city street "
    "night morning photo view sunset tree flowers car bicycle table chair kitchen window people "
    "team wedding party birthday cake coffee cup book logo icon map diagram chart".split(),
    "fr": "le la les un une des et avec sur dans pour chien chat maison jardin rouge bleu vert "
    "petit grand vieux nouvelle femme homme enfant plage montagne rivière ville rue nuit matin "
    "coucher soleil arbre fleurs voiture vélo table chaise cuisine fenêtre gens équipe mariage "
    "gâteau café tasse livre été hiver château église".split(),
    "de": "der die das ein eine und mit auf im für Hund Katze Haus Garten rot blau grün klein "
    "groß alt neue Frau Mann Kind Kinder spielen Strand Berg Fluss Stadt Straße Nacht Morgen "
    "Sonnenuntergang Baum Blumen Auto Fahrrad Tisch Stuhl Küche Fenster Leute Hochzeit Kuchen "
    "Kaffee Tasse Buch über schön Brücke Kirche".split(),
    "es": "el la los las un una y con en para perro gato casa jardín rojo azul verde pequeño "
    "grande viejo nueva mujer hombre niño niños jugando playa montaña río ciudad calle noche "
    "mañana atardecer árbol flores coche bicicleta mesa silla cocina ventana gente equipo boda "
    "pastel café taza libro señor año".split(),
    "it": "il lo la gli le un una e con su nel per cane gatto casa giardino rosso blu verde "
    "piccolo grande vecchio nuova donna uomo bambino bambini spiaggia montagna fiume città "
    "strada notte mattina tramonto albero fiori macchina bicicletta tavolo sedia cucina "
    "finestra persone squadra matrimonio torta caffè tazza libro chiesa".split(),
    "pt": "o a os as um uma e com em no na para cão gato casa jardim vermelho azul verde "
    "pequeno grande velho nova mulher homem criança crianças praia montanha rio cidade rua "
    "noite manhã pôr sol árvore flores carro bicicleta mesa cadeira cozinha janela pessoas "
    "equipe casamento bolo café xícara livro não são".split(),
    "nl": "de het een en met op in voor hond kat huis tuin rood blauw groen klein groot oud "
    "nieuwe vrouw man kind kinderen spelen strand berg rivier stad straat nacht ochtend "
    "zonsondergang boom bloemen auto fiets tafel stoel keuken raam mensen bruiloft taart "
    "koffie kopje boek zijn niet".split(),
    "ru": "и в на с для собака кошка дом сад красный синий зелёный маленький большой старый "
    "новая женщина мужчина ребёнок дети играют пляж гора река город улица ночь утро закат "
    "дерево цветы машина велосипед стол стул кухня окно люди команда свадьба торт кофе "
    "чашка книга".split(),
    "zh": "我们 的 是 在 一个 城市 夜景 小狗 公园 里 玩耍 山水 风景 画 红色 花朵 学生 学校 "
    "中国 北京 上海 美丽 海边 日落 家庭 聚会 生日 蛋糕 咖啡 书籍".split(),
    "ja": "東京 の 夜景 と 桜 が 咲く 公園 で 子供 たち が 遊ぶ 写真 です 猫 犬 海 山 "
    "カメラ コーヒー ケーキ ラーメン 日本 富士山 きれい な 花".split(),
    "ar": "في من على مع إلى هذا صورة مدينة ليلا شاطئ البحر جبل نهر شجرة زهور سيارة قطة كلب "
    "منزل حديقة أطفال يلعبون غروب الشمس طاولة كرسي مطبخ".split(),
    "el": "ο η το και με σε για σκύλος γάτα σπίτι κήπος κόκκινο μπλε πράσινο μικρό μεγάλο "
    "γυναίκα άντρας παιδί παραλία βουνό ποτάμι πόλη δρόμος νύχτα ηλιοβασίλεμα δέντρο λουλούδια".split(),
}

FIXED = [
    "Four green squares",
    "Company logo",
    "A dog running on the beach at sunset",
    "Portrait of a young woman with a red umbrella standing in the rain in front of an old "
    "brick building, photographed on a grey autumn afternoon in the city centre",
    "NEW YORK CITY skyline at night",
    "USA TODAY logo",
    "McDonald's iPhone eBay",
    "IMG_1234.jpg",
    "Click here https://example.com/images/photo_01.jpg for the full-size picture",
    "Contact us at info@example.com or visit http://www.example.org/about",
    "https://example.com/only/a/url.png",
    "mail@example.com",
    "12345",
    "2019-03-14 12:00",
    "",
    " ",
    "   \t\n ",
    "🎉🎉🎉",
    "😀 🐶 🌅",
    "!!! ??? ...",
    "Москва Moscow skyline",
    "東京タワー Tokyo Tower at night",
    "北京 Beijing 2008",
    "Привет_мир [тест] ^_^",
    "Ελληνικά και English μαζί",
    "مرحبا بالعالم hello",
    "서울 야경 사진",
    "ひらがなとカタカナ",
    "Bucureşti şi Bucureștiul, țară și ţară",
    unicodedata.normalize("NFD", "Tiếng Việt có dấu: Hà Nội mùa thu"),
    "Tiếng Việt có dấu: Hà Nội mùa thu",
    "Ünïcödé çàfé naïve résumé",
    "a",
    "A",
    "AB",
    "x y z",
    "The    quick   brown\tfox\njumps",
    "«Le Monde» — l’été 2020…",
    "Straße über Äpfel ÖL",
    "JۥṲヨk: ˨ѓズʾ/ˢ",  # Latin Extended Additional counts as non-Latin in cleaning_text
    "q今 öḈ ڌǳ ذAډɀ ",
    "𝐀𝐁𝐂 𝐝𝐞𝐟 ABC abc McDONALD'S ÀÉÎ ÕÜ",  # capital runs, also outside the BMP
    # Real alt texts that need many draws (some trials run to draw 1000).
    "USD 35.99",
    "buyout sign are leg, diving strangest",
    "Jenny of sky luka",
    "&quot;Outdoors Can Packers Girl At&quot;",
    "Zeaquaquym ZE-5690 Shorts (Blue)",
    "man america ideas",
]


def _random_unicode_texts(count: int, seed: int) -> list[str]:
    """Characters from many Unicode blocks, to exercise normalisation and cleaning."""
    rng = random.Random(seed)
    blocks = [(0x20, 0x7F), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x590, 0x700),
              (0x1E00, 0x1F00), (0x2000, 0x2070), (0x3040, 0x3100), (0x4E00, 0x4F00),
              (0xAC00, 0xAC40), (0x1F600, 0x1F650), (0x0900, 0x0A00)]
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(1, 30)):
            low, high = rng.choice(blocks[: rng.randint(1, len(blocks))])
            chars.append(chr(rng.randrange(low, high)))
            if rng.random() < 0.2:
                chars.append(" ")
        texts.append("".join(chars))
    return texts


def _varied_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    languages = sorted(WORDS)
    texts = []
    for i in range(count):
        language = "en" if i % 3 == 0 else languages[i % len(languages)]
        words = [rng.choice(WORDS[language]) for _ in range(rng.choice([1, 2, 3, 5, 8, 13]))]
        style = rng.random()
        if style < 0.15:
            words[0] = words[0].capitalize()
        elif style < 0.2:
            words = [w.upper() for w in words]
        elif style < 0.25:
            words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS["en"]))  # mixed
        elif style < 0.28:
            words.append(f"http://example.com/{rng.randrange(1000)}.jpg")
        elif style < 0.3:
            words.append(str(rng.randrange(100000)))
        texts.append(" ".join(words))
    return texts


@pytest.fixture(scope="module")
def reference():
    return langid.langdetect_reference(SEED)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def identifier(engine):
    made = LanguageIdentifier(SEED, cache_entries=0, engine=engine)
    assert made.engine == engine
    return made


TEXTS = (
    FIXED
    + _varied_texts(300, seed=7)
    + _random_unicode_texts(150, seed=11)
    + [" ".join(WORDS["fr"]) * 3]
)


def _assert_same(text, got, expected):
    if expected is None:
        assert got is None, (text, got)
        return
    # The same language and bit for bit the same probability.
    assert got == expected, (text, got, expected)


def test_detect_many_agrees_with_langdetect(identifier, reference):
    answers = identifier.detect_many(TEXTS)
    for text, got in zip(TEXTS, answers):
        _assert_same(text, got, reference(text))


def test_detect_agrees_with_langdetect(identifier, reference):
    for text in FIXED:
        _assert_same(text, identifier.detect(text), reference(text))


def test_none_exactly_where_langdetect_has_no_answer(identifier, reference):
    for text in ["12345", "", " ", "   \t\n ", "🎉🎉🎉", "!!! ??? ...", "https://example.com/x.png"]:
        assert reference(text) is None
        assert identifier.detect(text) is None
    assert identifier.detect("Four green squares") is not None


def test_detect_many_equals_detect_one_by_one(identifier):
    texts = TEXTS[:80]
    assert identifier.detect_many(texts) == [identifier.detect(t) for t in texts]


def test_cache_and_duplicates_do_not_change_answers(engine):
    cached = LanguageIdentifier(SEED, cache_entries=10, engine=engine)
    uncached = LanguageIdentifier(SEED, cache_entries=0, engine=engine)
    texts = (TEXTS[:30] * 2)[::-1]
    expected = uncached.detect_many(texts)
    assert cached.detect_many(texts) == expected
    assert cached.detect_many(texts) == expected  # now partly from the (small) cache
    assert [cached.detect(t) for t in texts] == expected


def test_long_text_is_truncated_like_langdetect(identifier, reference):
    text = "Le petit chat dort sur la table de la cuisine. " * 300  # > 10000 characters
    _assert_same(text, identifier.detect(text), reference(text))


def test_other_seed_agrees(engine):
    seed = 42
    reference = langid.langdetect_reference(seed)
    identifier = LanguageIdentifier(seed, cache_entries=0, engine=engine)
    texts = FIXED[:20] + _varied_texts(40, seed=3)
    for text, got in zip(texts, identifier.detect_many(texts)):
        _assert_same(text, got, reference(text))


def test_replay_paths_agree(monkeypatch, reference):
    """numpy engine: stopped texts dropped at once or kept to the end of each round, choices
    precomputed 5 draws at a time, and choice windows so short that rows must be redone."""
    texts = FIXED + _varied_texts(60, seed=5) + _random_unicode_texts(30, seed=6)
    expected = [reference(t) for t in texts]
    for compact_share, rounds, short_windows in [
        (0.0, (1,) + (5,) * 200, False),
        (1.0, (51, 50, 100, 200, 300, 300), True),
        (0.5, (6, 5, 990), True),
    ]:
        monkeypatch.setattr(langid, "_COMPACT_SHARE", compact_share)
        monkeypatch.setattr(langid, "_ROUND_DRAWS", rounds)
        if short_windows:
            monkeypatch.setattr(langid, "_first_window", lambda draws: draws + 1)
        answers = LanguageIdentifier(SEED, cache_entries=0, engine="numpy").detect_many(texts)
        for text, got, want in zip(texts, answers, expected):
            _assert_same(text, got, want)


def test_short_stream_is_extended(monkeypatch, engine, reference):
    """A stream far too short for the texts (a few draws): it is doubled until every text
    fits (the numba engine replays the texts that ran out again), with the same answers."""
    monkeypatch.setattr(langid, "_FIRST_STREAM_WORDS", 16)
    identifier = LanguageIdentifier(SEED, cache_entries=0, engine=engine)
    texts = FIXED + _varied_texts(40, seed=8)
    answers = identifier.detect_many(texts)
    assert len(identifier._words) > 1000
    for text, got in zip(texts, answers):
        _assert_same(text, got, reference(text))


def test_engine_choice():
    assert LanguageIdentifier(SEED, engine="numpy").engine == "numpy"
    assert LanguageIdentifier(SEED).engine == ENGINES[0]  # numba whenever it is installed
    with pytest.raises(ValueError):
        LanguageIdentifier(SEED, engine="fortran")


def _neumaier(values: list[float]) -> float:
    """CPython 3.12's float sum (Python/bltinmodule.c), restated."""
    total, compensation = 0.0, 0.0
    for x in values:
        after = total + x
        if abs(total) >= abs(x):
            compensation += (total - after) + x
        else:
            compensation += (x - after) + total
        total = after
    if compensation and math.isfinite(compensation):
        total += compensation
    return total


def test_summation_follows_this_python():
    """langdetect normalises with the builtin sum(): the replay adds up the same way."""
    rng = random.Random(3)
    lists = [[rng.random() * 10.0 ** rng.randint(-30, 0) for _ in range(55)] for _ in range(200)]
    lists.append([1.0, 1e100, 1.0, -1e100])
    compensated = [sum(v) == _neumaier(v) for v in lists]
    left_to_right = [sum(v) == functools.reduce(operator.add, v) for v in lists]
    assert all(compensated) if langid._COMPENSATED_SUM else all(left_to_right)
    assert not all(compensated) or not all(left_to_right)  # the lists tell them apart
    columns = np.ascontiguousarray(np.array(lists[:-1]).T)  # [item, column], C order
    expected = [sum(v) for v in lists[:-1]]
    if langid._COMPENSATED_SUM:
        assert langid._neumaier_columns(columns).tolist() == expected
    else:
        assert np.add.reduce(columns, axis=0).tolist() == expected


def test_word_ngrams_fast_path_matches_character_loop(identifier):
    """_ngrams_of_word's fast path (no capital runs) against its character-by-character
    branch, which restates NGram.add_char."""
    words = {w for t in TEXTS for w in t.translate(identifier._normalized_chars).split(" ") if w}
    checked = 0
    for word in sorted(words):
        for key in (word, word + " "):
            padded = " " + key
            uppers = [c.isupper() for c in padded]
            if any(a and b for a, b in zip(uppers, uppers[1:])):
                continue  # takes the character loop anyway
            rows = identifier._ngram_rows
            slow = []
            for end in range(1, len(padded)):
                grams = [padded[end], padded[end - 1 : end + 1]]
                if end >= 2:
                    grams.append(padded[end - 2 : end + 1])
                slow += [rows[g] for g in grams if g in rows]
            assert identifier._ngrams_of_word(key) == slow, key
            checked += 1
    assert checked > 500
