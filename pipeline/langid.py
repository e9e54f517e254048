"""Fast language identification that gives langdetect's own answers.

`LanguageIdentifier(seed).detect(text)` returns what the project's langdetect recipe returns
(`DetectorFactory` with `set_seed(seed)`, one `Detector` per text, best of
`get_probabilities()`, None on `LangDetectException` or an empty result), about 10-30 times
faster.  It reads langdetect's profiles and reuses its regular expressions, its character
normaliser and its Vietnamese normaliser, so it follows the installed langdetect.

Why the answers are the same, not merely similar
------------------------------------------------
langdetect is a Monte Carlo method: for each of 7 trials it draws a smoothing constant
(`gauss`), then repeatedly picks one of the text's n-grams at random (`random.choice`) and
multiplies the 55 language probabilities by that n-gram's profile, normalising and testing
for convergence (max > 0.99999) after draws 0, 5, 10, ... and stopping at draw 1000 at the
latest.  Every `Detector` re-seeds its `random.Random` with the factory's seed before the
first trial, so *every text consumes the same stream of 32-bit Mersenne Twister words*; only
where it is in that stream differs from text to text.  We generate that word stream once per
seed and derive each random call from it exactly as CPython does:

* `random()` takes two words a, b: ((a >> 5) * 2**26 + (b >> 6)) / 2**53;
* `gauss()` computes a pair from two `random()` values and caches the second one for the
  next call, so trials 0, 2, 4, 6 read 4 words and trials 1, 3, 5 read none;
* `choice(seq)` with n = len(seq) rejects words until (word >> (32 - n.bit_length())) < n.

With the stream positions known, the arithmetic is replayed with the same IEEE operations in
the same order (numpy elementwise +, *, / are correctly rounded, and the normalising sum is
taken with `cumsum`, which adds left to right as Python's `sum` does), vectorised across a
batch of texts and across the 55 languages instead of looping in Python.  N-gram extraction
is the same state machine as `NGram.add_char` restated per word (a word's n-grams depend only
on the word and on whether a space follows it), with the per-character normalisation
precomputed as a `str.translate` table and each word's n-grams cached.

Where it can still differ
-------------------------
* langdetect raises `ZeroDivisionError` (not caught by the project) if every probability
  underflows to zero within 5 draws; that needs a smoothing constant below zero, i.e. a
  Gaussian draw below -10, so it does not happen; here it would give nan and answer None.
* Numeric results are bit-for-bit the same in testing; a numpy build whose elementwise
  kernels were not correctly rounded would differ in the last bits, which changes a decision
  only when a probability sits within rounding of 0.99999 or 0.1.
* Only the project's configuration is replicated: default alpha (0.5), 7 trials, no prior
  map, max_text_length 10000, integer seed.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import random
import re

import numpy as np

# langdetect's constants (Detector class attributes), named for what they do here.
_ALPHA = 0.5  # Detector.ALPHA_DEFAULT
_ALPHA_WIDTH = 0.05  # Detector.ALPHA_WIDTH
_TRIALS = 7  # Detector.n_trial
_ITERATION_LIMIT = 1000
_CONVERGED = 0.99999  # Detector.CONV_THRESHOLD
_REPORTED = 0.1  # Detector.PROB_THRESHOLD: languages at or below it are not reported
_BASE_FREQ = 10000
_MAX_TEXT_LENGTH = 10000
_CHECK_EVERY = 5  # normalise and test convergence after draws 0, 5, 10, ...

# Draws replayed per round of a trial: most texts converge within the first round; the rest
# continue with longer rounds.  Every round ends on a checkpoint draw (0, 5, 10, ...).
_ROUND_DRAWS = (51, 50, 100, 200, 300, 300)  # sums to 1001 = draws 0..1000
_GATHER_ROWS = 4096  # profile rows gathered at once (4096 x 55 floats: 1.8 MB)
_BATCH_TEXTS = 8192  # texts replayed together; bounds the [texts, draws] index arrays
_FIRST_STREAM_WORDS = 1 << 16  # doubled on demand; a typical text uses a few thousand
_WORD_CACHE_ENTRIES = 200_000
_TEXT_CACHE_ENTRIES = 100_000

_LATIN_RE = re.compile("[A-z]")  # langdetect's `'A' <= ch <= 'z'`, punctuation included
# Counted as non-Latin by cleaning_text: everything from U+0300 up.  (It means to spare
# Latin Extended Additional, but compares the block's number with its name, so never does.)
_NON_LATIN_RE = re.compile("[\u0300-\U0010ffff]")


class LanguageIdentifier:
    """Best language and its probability for a text, or None, exactly as seeded langdetect.

    Build one per worker (e.g. in `DoFn.setup()`); it is not thread-safe (it keeps caches) and
    not meant to be pickled.  Setup reads the 55 profiles (~0.2 s); the profile matrix takes
    about 40 MB.
    """

    def __init__(
        self,
        seed: int = 0,
        cache_entries: int = _TEXT_CACHE_ENTRIES,
        profiles_directory: str | None = None,
    ):
        from langdetect.detector import Detector
        from langdetect.detector_factory import PROFILES_DIRECTORY
        from langdetect.utils.ngram import NGram

        if not isinstance(seed, int):
            raise TypeError("seed must be an int (langdetect is only deterministic then)")
        self._seed = seed
        self._url_re = Detector.URL_RE
        self._mail_re = Detector.MAIL_RE
        self._normalize_vi = NGram.normalize_vi
        self._load_profiles(profiles_directory or PROFILES_DIRECTORY)
        # NGram.normalize only changes characters of the Basic Multilingual Plane, so a table
        # indexed by code point covers it; str.translate leaves characters past its end as
        # they are (IndexError means "no mapping").
        self._normalized_chars = "".join(NGram.normalize(chr(cp)) for cp in range(0x10000))
        self._word_ngrams: dict[str, list[int]] = {}
        self._words = np.zeros(0, dtype=np.int64)
        self._ensure_stream(_FIRST_STREAM_WORDS)
        self._first_gauss = self._gauss_pair(0)  # every text starts its stream at word 0
        self._cache_entries = cache_entries
        self._cache: collections.OrderedDict[str, tuple[str, float] | None] = (
            collections.OrderedDict()
        )

    # ----------------------------------------------------------------------------- public

    @property
    def languages(self) -> list[str]:
        return list(self._languages)

    def detect(self, text: str) -> tuple[str, float] | None:
        """(language, probability) of the most probable language, or None."""
        return self.detect_many([text])[0]

    def detect_many(self, texts: list[str]) -> list[tuple[str, float] | None]:
        """detect() for each text; replays all uncached texts together (much faster)."""
        answers: list[tuple[str, float] | None] = [None] * len(texts)
        pending: dict[str, list[int]] = {}  # uncached text -> its places in `texts`
        for place, text in enumerate(texts):
            if text in self._cache:
                self._cache.move_to_end(text)
                answers[place] = self._cache[text]
            else:
                pending.setdefault(text, []).append(place)
        unique = list(pending)
        for start in range(0, len(unique), _BATCH_TEXTS):
            batch = unique[start : start + _BATCH_TEXTS]
            for text, answer in zip(batch, self._identify(batch)):
                for place in pending[text]:
                    answers[place] = answer
                self._remember(text, answer)
        return answers

    # ---------------------------------------------------------------------------- profiles

    def _load_profiles(self, directory: str) -> None:
        """Profile matrix [n-gram, language] of n-gram frequency / n-grams of that length.

        Languages are numbered in os.listdir order, as DetectorFactory.load_profile does:
        the order fixes how the normalising sum adds up, so it must be the same to round the
        same.  Values are computed as in DetectorFactory.add_profile.
        """
        profiles = []
        for filename in os.listdir(directory):
            path = os.path.join(directory, filename)
            if filename.startswith(".") or not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                profiles.append(json.load(f))
        if len(profiles) < 2:
            raise ValueError(f"no langdetect profiles in {directory}")
        self._languages = [p["name"] for p in profiles]
        if len(set(self._languages)) != len(self._languages):
            raise ValueError("duplicate language profile")
        rows: dict[str, int] = {}
        for profile in profiles:
            for ngram in profile["freq"]:
                if 1 <= len(ngram) <= 3 and ngram not in rows:
                    rows[ngram] = len(rows)
        matrix = np.zeros((len(rows), len(profiles)), dtype=np.float64)
        for column, profile in enumerate(profiles):
            n_words = profile["n_words"]
            for ngram, count in profile["freq"].items():
                if 1 <= len(ngram) <= 3:
                    matrix[rows[ngram], column] = 1.0 * count / n_words[len(ngram) - 1]
        self._ngram_rows = rows
        self._profile = matrix

    # ------------------------------------------------------------------------------ n-grams

    def _features(self, text: str) -> list[int]:
        """Profile rows of the n-grams langdetect's Detector extracts, in its order."""
        # Detector.append: drop URLs and e-mail addresses, normalise Vietnamese, truncate.
        # (It also collapses runs of spaces, which changes no n-gram and no count below.)
        if "http" in text:  # URL_RE needs "http"
            text = self._url_re.sub(" ", text)
        if "@" in text:  # MAIL_RE needs "@"
            text = self._mail_re.sub(" ", text)
        if not text.isascii():  # Vietnamese diacritics are not ASCII
            text = self._normalize_vi(text)
        text = text[:_MAX_TEXT_LENGTH]
        # Detector.cleaning_text: mostly non-Latin text loses its Latin letters.
        if not text.isascii():
            if len(_LATIN_RE.findall(text)) * 2 < len(_NON_LATIN_RE.findall(text)):
                text = _LATIN_RE.sub("", text)
        # NGram.add_char restarts at every space, so n-grams never span words: a word's
        # n-grams depend only on the word and on whether a space follows it.
        pieces = text.translate(self._normalized_chars).split(" ")
        last = len(pieces) - 1
        features: list[int] = []
        word_ngrams = self._word_ngrams
        for place, word in enumerate(pieces):
            if not word:
                continue
            key = word + " " if place < last else word
            rows = word_ngrams.get(key)
            if rows is None:
                rows = self._ngrams_of_word(key)
                if len(word_ngrams) >= _WORD_CACHE_ENTRIES:
                    word_ngrams.clear()
                word_ngrams[key] = rows
            features.extend(rows)
        return features

    def _ngrams_of_word(self, word: str) -> list[int]:
        """Detector._extract_ngrams for one normalised word (with its trailing space if any).

        After a space NGram's buffer is " " + the word so far, keeping its last 3 characters;
        after each character it yields the 1-, 2- and 3-character suffixes of the buffer that
        are in the profile, except the lone space and except while `capitalword` is set, which
        is exactly "this character and the previous one are both upper case".
        """
        padded = " " + word
        rows = self._ngram_rows
        found = []
        previous_upper = False
        for end in range(1, len(padded)):
            char = padded[end]
            upper = char.isupper()
            if upper and previous_upper:
                continue
            previous_upper = upper
            if char != " " and char in rows:
                found.append(rows[char])
            bigram = padded[end - 1 : end + 1]
            if bigram in rows:
                found.append(rows[bigram])
            if end >= 2:  # the buffer holds 3 characters from the word's second one on
                trigram = padded[end - 2 : end + 1]
                if trigram in rows:
                    found.append(rows[trigram])
        return found

    # ------------------------------------------------------------------------ random stream

    def _ensure_stream(self, words: int) -> None:
        """Make the first `words` 32-bit Mersenne Twister outputs for the seed available.

        getrandbits(32 * N) emits N successive 32-bit outputs, the first as the lowest bits,
        the same words that N separate getrandbits(32) / random() calls would consume.
        """
        if words <= len(self._words):
            return
        count = max(words, 2 * len(self._words))
        bits = random.Random(self._seed).getrandbits(32 * count)
        stream = np.frombuffer(bits.to_bytes(4 * count, "little"), dtype="<u4")
        self._words = stream.astype(np.int64)

    def _uniform(self, position: int) -> float:
        """random.random() from the two words at `position` (CPython's genrand_res53)."""
        a = int(self._words[position]) >> 5
        b = int(self._words[position + 1]) >> 6
        return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)

    def _gauss_pair(self, position: int) -> tuple[float, float]:
        """random.gauss(0, 1) and the value it caches for the next call (4 words)."""
        self._ensure_stream(position + 4)
        x2pi = self._uniform(position) * (2.0 * math.pi)
        g2rad = math.sqrt(-2.0 * math.log(1.0 - self._uniform(position + 2)))
        return math.cos(x2pi) * g2rad, math.sin(x2pi) * g2rad

    def _choices(
        self, position: np.ndarray, count: np.ndarray, draws: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The next `draws` random.choice indices of each text, and the stream position after each.

        `choice` over `count` items takes words until (word >> (32 - k)) < count, where
        k = count.bit_length().  Row r starts at stream word position[r].
        """
        shift = 32 - _bit_lengths(count)
        window = 2 * draws + 32  # at least half of the words are accepted
        while True:
            self._ensure_stream(int(position.max()) + window)
            candidates = self._words[position[:, None] + np.arange(window)] >> shift[:, None]
            accepted = candidates < count[:, None]
            accepted_per_row = np.count_nonzero(accepted, axis=1)
            if accepted_per_row.min() >= draws:
                break
            window *= 2
        rows, columns = np.nonzero(accepted)  # row-major: each row's columns in order
        first_of_row = np.concatenate([[0], np.cumsum(accepted_per_row)[:-1]])
        pick = first_of_row[:, None] + np.arange(draws)
        rows, columns = rows[pick], columns[pick]
        return candidates[rows, columns], position[:, None] + columns + 1

    # ---------------------------------------------------------------------------- detection

    def _identify(self, texts: list[str]) -> list[tuple[str, float] | None]:
        features = [self._features(text) for text in texts]
        answers: list[tuple[str, float] | None] = [None] * len(texts)
        detectable = [i for i, f in enumerate(features) if f]  # no n-grams: "No features"
        if not detectable:
            return answers
        probabilities = self._replay([features[i] for i in detectable])
        best = np.argmax(probabilities, axis=1)  # first of equals, like the stable sort
        for row, i in enumerate(detectable):
            probability = float(probabilities[row, best[row]])
            if probability > _REPORTED:  # else get_probabilities() is empty: IndexError
                answers[i] = (self._languages[best[row]], probability)
        return answers

    def _replay(self, features: list[list[int]]) -> np.ndarray:
        """Detector._detect_block for each text: the averaged language probabilities."""
        count = np.array([len(f) for f in features], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(count)[:-1]])
        all_rows = np.fromiter(
            itertools.chain.from_iterable(features), dtype=np.int64, count=int(count.sum())
        )
        texts = len(features)
        position = np.zeros(texts, dtype=np.int64)
        cached_gauss = np.zeros(texts)
        averaged = np.zeros((texts, len(self._languages)))
        for trial in range(_TRIALS):
            if trial % 2 == 0:  # gauss() computes a new pair: 4 words
                gauss = np.empty(texts)
                for i in range(texts):
                    if position[i] == 0:
                        gauss[i], cached_gauss[i] = self._first_gauss
                    else:
                        gauss[i], cached_gauss[i] = self._gauss_pair(int(position[i]))
                position += 4
            else:  # gauss() returns the value cached by the previous trial
                gauss = cached_gauss.copy()
            alpha = _ALPHA + gauss * _ALPHA_WIDTH
            weight = alpha / _BASE_FREQ
            probability, position = self._trial(all_rows, starts, count, position, weight)
            averaged += probability / _TRIALS
        return averaged

    def _trial(
        self,
        all_rows: np.ndarray,
        starts: np.ndarray,
        count: np.ndarray,
        position: np.ndarray,
        weight: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One trial for every text: its normalised probabilities when it stopped, and the
        stream position after its last draw.

        Each draw is applied to all running texts at once.  Factors are gathered a few draws
        at a time, so the work arrays stay in cache, and texts leave the arrays once they
        have stopped.
        """
        texts, languages = len(count), len(self._languages)
        finished = np.empty((texts, languages))
        end_position = position.copy()
        texts_running = np.arange(texts)
        current = np.full((texts, languages), 1.0 / languages)  # _init_probability
        weights = weight[:, None]
        first_draw = 0  # iteration number of the round's first draw
        for round_draws in _ROUND_DRAWS:
            chosen, after = self._choices(position, count[texts_running], round_draws)
            # profile row of each draw, [draw, text]
            profile_rows = all_rows[starts[texts_running, None] + chosen].T
            draw = 0
            while draw < round_draws:
                running = len(texts_running)
                gathered = min(round_draws - draw, max(1, _GATHER_ROWS // running))
                # weight + lang_prob_map[i] for the next draws (Detector._update_lang_prob)
                factors = np.take(self._profile, profile_rows[draw : draw + gathered], axis=0)
                factors += weights
                stopped = np.zeros(running, dtype=bool)
                for offset in range(gathered):
                    current *= factors[offset]
                    iteration = first_draw + draw + offset
                    if iteration % _CHECK_EVERY:
                        continue
                    maximum = self._normalize(current)
                    stop = ~stopped
                    if iteration < _ITERATION_LIMIT:
                        stop &= maximum > _CONVERGED
                    if stop.any():
                        finished[texts_running[stop]] = current[stop]
                        end_position[texts_running[stop]] = after[stop, draw + offset]
                        stopped |= stop
                        if stopped.all():
                            return finished, end_position
                draw += gathered
                if stopped.any():
                    keep = ~stopped
                    texts_running, current = texts_running[keep], current[keep]
                    weights, after = weights[keep], after[keep]
                    profile_rows = profile_rows[:, keep]
            first_draw += round_draws
            position = after[:, -1]
        raise AssertionError("every trial stops at iteration 1000")

    @staticmethod
    def _normalize(current: np.ndarray) -> np.ndarray:
        """Detector._normalize_prob for each row, in place; returns each row's maximum.

        Python's sum adds left to right.  Summing a [language, text] array over languages
        adds whole rows in that order; for a handful of texts numpy may sum the languages
        pairwise instead, so those use cumsum, which is always left to right.  Rounding is
        monotonic, so max(p / s) is max(p) / s exactly.
        """
        if len(current) < 16:
            totals = np.cumsum(current, axis=1)[:, -1]
            maximum = current.max(axis=1) / totals
        else:
            by_language = np.ascontiguousarray(current.T)
            totals = by_language.sum(axis=0)
            maximum = by_language.max(axis=0) / totals
        current /= totals[:, None]
        return maximum

    def _remember(self, text: str, answer: tuple[str, float] | None) -> None:
        if self._cache_entries <= 0:
            return
        self._cache[text] = answer
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)


def _bit_lengths(values: np.ndarray) -> np.ndarray:
    """int.bit_length() of each positive value."""
    return np.array([int(v).bit_length() for v in values], dtype=np.int64)
