"""Fast language identification that gives langdetect's own answers.

`LanguageIdentifier(seed).detect(text)` returns what the project's langdetect recipe returns
(`DetectorFactory` with `set_seed(seed)`, one `Detector` per text, best of
`get_probabilities()`, None on `LangDetectException` or an empty result), with the same
language and bit for bit the same probability, far faster with numba (`engine="numba"`, the
default when numba is installed) and still much faster with the numpy fallback
(`engine="numpy"`, which needs texts in batches: `detect_many`); benchmarks/bench_language.py
measures both against langdetect, and benchmarks/RESULTS.md keeps the figures.  It reads langdetect's profiles and reuses its regular
expressions, its character normaliser and its Vietnamese normaliser, so it follows the
installed langdetect.

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
  next call, so trials 0, 2, 4, 6 read 4 words and trials 1, 3, 5 read none (its log, cos and
  sin are taken with Python's `math`, as `random` does: numpy's may round differently);
* `choice(seq)` with n = len(seq) rejects words until (word >> (32 - n.bit_length())) < n.

With the stream positions known, the arithmetic is replayed with the same IEEE operations in
the same order.  langdetect's normalising `sum(prob)` adds left to right up to Python 3.11 and
with Neumaier's compensated summation from 3.12 on; the replay does what the running Python
does (`_COMPENSATED_SUM`).

The numba engine (`_replay_texts`) is langdetect's loop, compiled, text after text (no
fast-math, so nothing is reassociated or fused; the gauss() weights come precomputed from
Python's `math`).  The numpy engine vectorises across a batch of texts and across the 55
languages instead (numpy's elementwise +, *, / and sqrt are correctly rounded):

* each draw multiplies by `weight + profile`; a checkpoint's 5 draws are applied with one
  `np.multiply.reduce` over a [draw, text, language] stack whose first slice is the state:
  a reduction over the outer axis multiplies slice after slice, (((state * f1) * f2) ...),
  which is exactly langdetect's sequence of in-place multiplications;
* the normalising sum is taken over a [language, text] copy of the state, so numpy adds
  whole rows, language after language, as Python's `sum` does (a reduction along a
  contiguous axis would be pairwise and round differently; see `_normalize`).

N-gram extraction is the same state machine as `NGram.add_char` restated per word (a word's
n-grams depend only on the word and on whether a space follows it), with the per-character
normalisation precomputed as a `str.translate` table and each word's n-grams cached.

Where the time goes
-------------------
numba engine: most of a caption's time is in the kernel, mostly the dependent chain of the
normalising sum and the 55 divisions every 5 draws; the rest is n-gram extraction in Python,
cached per word.  The kernel is compiled on first use and cached on disk next to this module
(`__pycache__`, or NUMBA_CACHE_DIR), so later processes start faster.

numpy engine: on alt-text-like captions a text takes on the order of a hundred draws per
trial, many hundreds in all, so the multiply-and-normalise arithmetic over 55 languages is most
of the cost.  The
replay therefore works in blocks of the 5 draws between checkpoints (a dozen numpy calls per
block however many texts are running), drops texts that have stopped only once they are
worth the copy (`_COMPACT_SHARE`), and precomputes the random choices in rounds.  A batch
still runs as long as its slowest text (some run to draw 1000 in every trial); that tail's
per-block call overhead is why batches of a few thousand texts are much faster per text
than single texts.

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

import array
import collections
import itertools
import json
import math
import os
import random
import re
import sys
from typing import Callable

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

# Draws whose random choices are precomputed together, per round of a trial: about half of
# the texts stop within the first 75 draws, the rest continue with longer rounds.  The first
# round is draw 0 plus whole blocks of 5, so every round ends on a checkpoint.
_ROUND_DRAWS = (51, 50, 100, 200, 300, 300)  # sums to 1001 = draws 0..1000
# Texts that have stopped keep being multiplied (their result is already saved) until this
# share of the running ones has stopped: dropping them copies the state, which costs about
# as much as a draw, and few stop at each checkpoint.
_COMPACT_SHARE = 1 / 8
# The normalising sum needs a [language, text] array at least this wide: numpy sums a
# single column pairwise (see `_normalize`).
_MIN_SUM_COLUMNS = 16
_BATCH_TEXTS = 8192  # texts replayed together; bounds the [texts, draws] index arrays
_FIRST_STREAM_WORDS = 1 << 16  # doubled on demand; a typical text uses a few thousand
_WORD_CACHE_ENTRIES = 200_000
_TEXT_CACHE_ENTRIES = 100_000
# The builtin sum() of floats adds left to right up to Python 3.11; from 3.12 on it uses
# Neumaier's compensated summation (see `_neumaier_columns`).
_COMPENSATED_SUM = sys.version_info >= (3, 12)

_LATIN_RE = re.compile("[A-z]")  # langdetect's `'A' <= ch <= 'z'`, punctuation included
# Counted as non-Latin by cleaning_text: everything from U+0300 up.  (It means to spare
# Latin Extended Additional, but compares the block's number with its name, so never does.)
_NON_LATIN_RE = re.compile("[\u0300-\U0010ffff]")
# A normalised text's words, each with the space that follows it if one does: n-grams
# never span a space, and a word's last n-grams depend on whether a space follows.
_WORD_RE = re.compile("[^ ]+ ?")
# Profile rows are cached and joined as native C ints, the type array("i") stores.
_ROW_TYPE = np.intc
assert array.array("i").itemsize == np.dtype(_ROW_TYPE).itemsize


class LanguageIdentifier:
    """Best language and its probability for a text, or None, exactly as seeded langdetect.

    Build one per worker (e.g. in `DoFn.setup()`); it is not thread-safe (it keeps caches) and
    not meant to be pickled.  Setup reads the 55 profiles into one dense matrix (once per
    worker).  `engine`: "numba" (compiled replay), "numpy" (vectorised replay, the
    fallback), or "auto" (numba if it can be imported); `self.engine` says which one runs.
    Both give exactly langdetect's answers.
    """

    def __init__(
        self,
        seed: int = 0,
        cache_entries: int = _TEXT_CACHE_ENTRIES,
        profiles_directory: str | None = None,
        engine: str = "auto",
    ):
        from langdetect.detector import Detector
        from langdetect.detector_factory import PROFILES_DIRECTORY
        from langdetect.utils.ngram import NGram

        if not isinstance(seed, int):
            raise TypeError("seed must be an int (langdetect is only deterministic then)")
        if engine not in ("auto", "numba", "numpy"):
            raise ValueError(f"engine must be 'auto', 'numba' or 'numpy', not {engine!r}")
        self._seed = seed
        # langdetect normalises with the builtin sum(), which adds left to right up to Python
        # 3.11 and with Neumaier's compensation from 3.12 on: the replay must do the same.
        self._compensated_sum = _COMPENSATED_SUM
        self._kernel = _compiled_kernel() if engine != "numpy" else None
        if engine == "numba" and self._kernel is None:
            raise ImportError("engine='numba' needs numba (pip install numba)")
        self.engine = "numba" if self._kernel is not None else "numpy"
        self._url_re = Detector.URL_RE
        self._mail_re = Detector.MAIL_RE
        self._normalize_vi = NGram.normalize_vi
        self._load_profiles(profiles_directory or PROFILES_DIRECTORY)
        # NGram.normalize only changes characters of the Basic Multilingual Plane, so a table
        # indexed by code point covers it; str.translate leaves characters past its end as
        # they are (IndexError means "no mapping").
        self._normalized_chars = "".join(NGram.normalize(chr(cp)) for cp in range(0x10000))
        self._word_rows = _WordRows(self._word_row_bytes, _WORD_CACHE_ENTRIES)
        self._words = np.zeros(0, dtype=np.uint32)
        # The numba engine's smoothing weights alpha / BASE_FREQ for a gauss() pair computed
        # at each stream position (the first value and the one cached for the next trial).
        self._first_weight = np.zeros(0)
        self._cached_weight = np.zeros(0)
        self._ensure_stream(_FIRST_STREAM_WORDS)
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
        # NGram never yields the lone space; without it the lookups need no test for it.
        rows.pop(" ", None)
        self._ngram_rows = rows
        self._profile = matrix

    # ------------------------------------------------------------------------------ n-grams

    def _feature_bytes(self, text: str) -> bytes:
        """Profile rows of the n-grams langdetect's Detector extracts, in its order, as the
        bytes of a C int array (joining cached bytes is much faster than extending lists)."""
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
        words = _WORD_RE.findall(text.translate(self._normalized_chars))
        return b"".join(map(self._word_rows.__getitem__, words))

    def _word_row_bytes(self, word: str) -> bytes:
        return array.array("i", self._ngrams_of_word(word)).tobytes()

    def _ngrams_of_word(self, word: str) -> list[int]:
        """Detector._extract_ngrams for one normalised word (with its trailing space if any).

        After a space NGram's buffer is " " + the word so far, keeping its last 3 characters;
        after each character it yields the 1-, 2- and 3-character suffixes of the buffer that
        are in the profile, except the lone space and except while `capitalword` is set, which
        is exactly "this character and the previous one are both upper case".
        """
        padded = " " + word
        rows = self._ngram_rows
        uppers = list(map(str.isupper, padded))
        if True not in map(bool.__and__, uppers, uppers[1:]):
            # No character is skipped (the usual case): the suffixes after each character,
            # i.e. unigram, bigram and (from the second character on) trigram ending there.
            # (Built with map and zip, which loop in C: this runs for every new word.)
            bigrams = list(map(str.__add__, padded[:-1], padded[1:]))
            trigrams = map(str.__add__, bigrams[:-1], padded[2:])
            grams = itertools.chain(
                (padded[1], bigrams[0]),
                itertools.chain.from_iterable(zip(padded[2:], bigrams[1:], trigrams)),
            )
            return [row for row in map(rows.get, grams) if row is not None]
        found = []
        for end in range(1, len(padded)):
            if uppers[end] and uppers[end - 1]:
                continue
            if padded[end] in rows:  # the lone space is not in `rows`
                found.append(rows[padded[end]])
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
        self._words = np.frombuffer(bits.to_bytes(4 * count, "little"), dtype="<u4")

    def _uniforms(self, position: np.ndarray) -> np.ndarray:
        """random.random() from the two words at each position (CPython's genrand_res53);
        every step is exact in float64, so it is the same number."""
        a = (self._words[position] >> 5).astype(np.float64)
        b = (self._words[position + 1] >> 6).astype(np.float64)
        return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)

    def _gauss_pairs(self, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """random.gauss(0, 1) at each position and the value it caches for the next call.

        Computed as random.gauss does; log, cos and sin with `math` (numpy's may differ in the
        last bit), the rest elementwise with the same correctly rounded operations.
        """
        self._ensure_stream(int(position.max()) + 4)
        x2pi = self._uniforms(position) * (2.0 * math.pi)
        complement = 1.0 - self._uniforms(position + 2)
        n = len(position)
        log = np.fromiter(map(math.log, complement.tolist()), dtype=np.float64, count=n)
        g2rad = np.sqrt(-2.0 * log)
        angles = x2pi.tolist()
        cos = np.fromiter(map(math.cos, angles), dtype=np.float64, count=n)
        sin = np.fromiter(map(math.sin, angles), dtype=np.float64, count=n)
        return cos * g2rad, sin * g2rad

    def _choices(
        self, position: np.ndarray, count: np.ndarray, draws: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The next `draws` random.choice indices of each text, and the stream words each
        has taken after each draw (from its start position).

        `choice` over `count` items takes words until (word >> (32 - k)) < count, where
        k = count.bit_length(), i.e. until word < count << (32 - k) (which is below 2**32).
        Row r starts at stream word position[r].
        """
        shift = (32 - np.frexp(count.astype(np.float64))[1]).astype(np.uint32)  # bit_length
        limit = (count << shift).astype(np.uint32)
        chosen = np.empty((len(count), draws), dtype=np.int64)
        taken = np.empty((len(count), draws), dtype=np.int64)
        todo = np.arange(len(count))
        window = _first_window(draws)
        while len(todo):
            self._ensure_stream(int(position[todo].max()) + window)
            windows = np.lib.stride_tricks.sliding_window_view(self._words, window)
            words = windows[position[todo]]  # [row, word]
            flat = np.flatnonzero(words < limit[todo, None])  # row-major, in stream order
            # Where each row's accepted words begin in `flat` (cheaper than counting them).
            first_of_row = np.searchsorted(flat, np.arange(len(todo) + 1) * window)
            enough = np.diff(first_of_row) >= draws
            complete = np.flatnonzero(enough)  # rarely not all: those get a longer window
            picked = flat[first_of_row[complete, None] + np.arange(draws)]
            done = todo[complete]
            chosen[done] = words.ravel()[picked] >> shift[done, None]
            taken[done] = picked - (complete * window)[:, None] + 1
            todo = todo[~enough]
            window *= 2
        return chosen, taken

    # ---------------------------------------------------------------------------- detection

    def _identify(self, texts: list[str]) -> list[tuple[str, float] | None]:
        encoded = [self._feature_bytes(text) for text in texts]
        count = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        count //= np.dtype(_ROW_TYPE).itemsize
        answers: list[tuple[str, float] | None] = [None] * len(texts)
        detectable = np.flatnonzero(count)  # no n-grams: "No features in text"
        if not len(detectable):
            return answers
        all_rows = np.frombuffer(b"".join(encoded), dtype=_ROW_TYPE).astype(np.intp)
        if self._kernel is not None:
            probabilities = self._replay_compiled(all_rows, count[detectable])
        else:
            probabilities = self._replay(all_rows, count[detectable])
        best = np.argmax(probabilities, axis=1)  # first of equals, like the stable sort
        best_probability = probabilities[np.arange(len(best)), best].tolist()
        for i, language, probability in zip(detectable.tolist(), best.tolist(), best_probability):
            if probability > _REPORTED:  # else get_probabilities() is empty: IndexError
                answers[i] = (self._languages[language], probability)
        return answers

    def _replay_compiled(self, all_rows: np.ndarray, count: np.ndarray) -> np.ndarray:
        """`_replay` with the numba kernel `_replay_texts`, text after text.

        A text that would read past the stream made so far is flagged by the kernel; the
        stream is then doubled and those texts are replayed again from the start.
        """
        starts = np.cumsum(count) - count
        probabilities = np.empty((len(count), len(self._languages)))
        exhausted = np.zeros(len(count), dtype=np.bool_)
        todo = np.arange(len(count), dtype=np.int64)
        initial = 1.0 / len(self._languages)  # Detector._init_probability
        while len(todo):
            self._ensure_weights()
            self._kernel(
                all_rows, starts, count, todo, self._words, self._first_weight,
                self._cached_weight, self._profile, initial, self._compensated_sum,
                probabilities, exhausted,
            )
            todo = np.flatnonzero(exhausted).astype(np.int64)
            if len(todo):
                exhausted[:] = False
                self._ensure_stream(2 * len(self._words))
        return probabilities

    def _ensure_weights(self) -> None:
        """alpha / BASE_FREQ for the gauss() pair at every position of the stream where one
        can start (all but the last 3 words), computed as `_replay` does."""
        have, need = len(self._first_weight), len(self._words) - 3
        if need <= have:
            return
        gauss, cached = self._gauss_pairs(np.arange(have, need))
        first = (_ALPHA + gauss * _ALPHA_WIDTH) / _BASE_FREQ
        second = (_ALPHA + cached * _ALPHA_WIDTH) / _BASE_FREQ
        self._first_weight = np.concatenate([self._first_weight, first])
        self._cached_weight = np.concatenate([self._cached_weight, second])

    def _replay(self, all_rows: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Detector._detect_block for each text (its n-grams' profile rows are `count[t]`
        consecutive entries of `all_rows`): the averaged language probabilities."""
        starts = np.cumsum(count) - count
        texts = len(count)
        position = np.zeros(texts, dtype=np.int64)
        averaged = np.zeros((texts, len(self._languages)))
        cached_gauss = np.zeros(texts)
        for trial in range(_TRIALS):
            if trial % 2 == 0:  # gauss() computes a new pair: 4 words
                gauss, cached_gauss = self._gauss_pairs(position)
                position = position + 4
            else:  # gauss() returns the value cached by the previous trial
                gauss = cached_gauss
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

        The running texts are "lanes" of the work arrays; each step applies the draws up to
        the next checkpoint to every lane at once (see `_Lanes`).
        """
        texts, languages = len(count), len(self._languages)
        finished = np.empty((texts, languages))
        end_position = np.empty(texts, dtype=np.int64)
        lanes = _Lanes(
            np.arange(texts),
            np.full((texts, languages), 1.0 / languages),
            weight,
            self._compensated_sum,
        )
        draw = 0  # langdetect's `i` of the next draw
        for round_draws in _ROUND_DRAWS:
            # This round's choices for the running texts, and their profile rows [draw, lane].
            chosen, taken = self._choices(position, count[lanes.text], round_draws)
            rows = all_rows[(starts[lanes.text, None] + chosen).T]
            lanes.start_round()
            done = 0
            while done < round_draws:
                block = 1 if draw == 0 else _CHECK_EVERY
                maximum = lanes.apply(self, rows[done : done + block])
                draw += block
                done += block
                if draw - 1 >= _ITERATION_LIMIT:  # `i >= ITERATION_LIMIT`: every text stops
                    stop = lanes.active()
                else:
                    stop = maximum > _CONVERGED
                    lanes.only_active(stop)
                if stop.any():
                    stopped = np.flatnonzero(stop)
                    text = lanes.text[stopped]
                    finished[text] = lanes.state[stopped]
                    in_round = lanes.in_round[stopped]
                    end_position[text] = position[in_round] + taken[in_round, done - 1]
                    if not lanes.stop(stopped):
                        return finished, end_position
            lanes.compact()  # the next round's choices are computed for running texts only
            position = position[lanes.in_round] + taken[lanes.in_round, -1]
        raise AssertionError("every trial stops at iteration 1000")

    def _remember(self, text: str, answer: tuple[str, float] | None) -> None:
        if self._cache_entries <= 0:
            return
        self._cache[text] = answer
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)


def _first_window(draws: int) -> int:
    """Stream words examined for `draws` choices; at least half of the words are accepted,
    so this rarely falls short (rows that do are redone with twice the window)."""
    return 2 * draws + 32


class _Lanes:
    """The running texts of a trial: their states and the work arrays of `apply`.

    Texts that stop are only marked inactive; they are dropped from the arrays ("compacted")
    once `_COMPACT_SHARE` of the lanes are inactive, or at the end of a round.  An inactive
    lane goes on being multiplied like a running text (its answer is already saved), which
    is harmless: it is the arithmetic langdetect would do had it not stopped.
    """

    def __init__(
        self, text: np.ndarray, state: np.ndarray, weight: np.ndarray, compensated: bool
    ):
        self.text = text  # the text of each lane
        self._compensated = compensated  # sum as Python 3.12+ does (see `_normalize`)
        languages = state.shape[1]
        # weight + profile is added as one [lane, language] array (adding a [lane, 1]
        # column would run numpy's inner loop 55 elements at a time).
        self._addend = np.repeat(weight[:, None], languages, axis=1)
        self._allocate(len(text), languages)
        self.state[...] = state
        self.in_round = np.arange(len(text))  # each lane's row in the round's arrays
        self._inactive: np.ndarray | None = None  # mask, while some lanes are inactive
        self._inactive_count = 0

    def _allocate(self, lanes: int, languages: int) -> None:
        # stack[0] is the state, stack[1:] the factors of the next draws: one reduction
        # over the first axis applies them in order (see the module docstring).
        self._stack = np.empty((_CHECK_EVERY + 1, lanes, languages))
        self.state = self._stack[0]
        self._product = np.empty((lanes, languages))
        # [language, lane] copy for the normalising sum; padding columns hold ones.
        self._by_language = np.ones((languages, max(lanes, _MIN_SUM_COLUMNS)))

    def start_round(self) -> None:
        self.in_round = np.arange(len(self.text))

    def apply(self, identifier: LanguageIdentifier, rows: np.ndarray) -> np.ndarray:
        """Apply the draws of `rows` [draw, lane (in the round's arrays)], then normalise
        (Detector._update_lang_prob, then _normalize_prob); returns each lane's maximum."""
        draws, lanes = len(rows), len(self.text)
        if lanes != rows.shape[1]:  # compacted during this round
            rows = rows[:, self.in_round]
        stack = self._stack[: draws + 1]
        factors = stack[1:]
        # mode="clip" because mode="raise" buffers `out`; the rows are valid anyway.
        np.take(identifier._profile, rows, axis=0, out=factors, mode="clip")
        factors += self._addend
        np.multiply.reduce(stack, axis=0, out=self._product)
        return self._normalize()

    def _normalize(self) -> np.ndarray:
        """Detector._normalize_prob of the product into the state; each lane's maximum.

        Python's sum adds left to right (<= 3.11).  Summing a [language, lane] array over
        languages adds whole rows in that order; a lone column would be summed pairwise (numpy
        does that along a contiguous axis), so the array has at least _MIN_SUM_COLUMNS
        columns.  From Python 3.12 on, sum compensates (`_neumaier_columns`).  Rounding is
        monotonic, so max(p / s) is max(p) / s exactly.
        """
        lanes = len(self.text)
        by_language = self._by_language
        np.copyto(by_language[:, :lanes], self._product.T)
        if self._compensated:
            totals = _neumaier_columns(by_language)[:lanes]
        else:
            totals = np.add.reduce(by_language, axis=0)[:lanes]
        maximum = np.maximum.reduce(by_language, axis=0)[:lanes]
        np.divide(self._product, totals[:, None], out=self.state)
        maximum /= totals
        return maximum

    def active(self) -> np.ndarray:
        if self._inactive is None:
            return np.ones(len(self.text), dtype=bool)
        return ~self._inactive

    def only_active(self, stop: np.ndarray) -> None:
        if self._inactive is not None:
            stop &= ~self._inactive

    def stop(self, lanes: np.ndarray) -> bool:
        """Mark these lanes stopped; False once no lane is running."""
        self._inactive_count += len(lanes)
        if self._inactive_count == len(self.text):
            return False
        if self._inactive is None:
            self._inactive = np.zeros(len(self.text), dtype=bool)
        self._inactive[lanes] = True
        if self._inactive_count >= _COMPACT_SHARE * len(self.text):
            self.compact()
        return True

    def compact(self) -> None:
        if self._inactive is None:
            return
        keep = np.flatnonzero(~self._inactive)
        state = self.state[keep]
        self.text, self.in_round = self.text[keep], self.in_round[keep]
        self._addend = self._addend[keep]
        self._allocate(len(keep), state.shape[1])
        self.state[...] = state
        self._inactive = None
        self._inactive_count = 0


class _WordRows(dict):
    """Normalised word (with its trailing space if any) -> its n-grams' profile rows as
    bytes, computed on first use; cleared when full (words follow a long-tailed law, and
    the common ones come back at once)."""

    def __init__(self, compute: Callable[[str], bytes], limit: int):
        super().__init__()
        self._compute = compute
        self._limit = limit

    def __missing__(self, word: str) -> bytes:
        if len(self) >= self._limit:
            self.clear()
        rows = self[word] = self._compute(word)
        return rows


def _neumaier_columns(values: np.ndarray) -> np.ndarray:
    """Python 3.12+'s sum() of each column of `values` [item, column], bit for bit.

    CPython (Python/bltinmodule.c, builtin_sum_impl) keeps a running sum s and a compensation
    c = 0.0, and for each item x after the first: t = s + x; c += (s - t) + x if |s| >= |x|
    else (x - t) + s; s = t; at the end it returns s + c if c is non-zero and finite, else s.
    Here the running sums are a sequential accumulate over the items, the compensation
    terms elementwise from them, and c their sum taken row after row (at least
    _MIN_SUM_COLUMNS columns, see `_Lanes._normalize`).
    """
    partial = np.add.accumulate(values, axis=0)  # s after each item, left to right
    before, after, item = partial[:-1], partial[1:], values[1:]
    terms = np.where(
        np.abs(before) >= np.abs(item), (before - after) + item, (item - after) + before
    )
    compensation = np.add.reduce(terms, axis=0)
    total = partial[-1]
    use = (compensation != 0.0) & np.isfinite(compensation)
    return np.where(use, total + compensation, total)


def _replay_texts(
    all_rows, starts, counts, todo, words, first_weight, cached_weight, profile, initial,
    compensated, probabilities, exhausted,
):
    """Detector._detect_block for each text t of `todo`, compiled by numba (`_compiled_kernel`).

    Text t's n-grams are the profile rows all_rows[starts[t] : starts[t] + counts[t]]; its
    averaged probabilities go to probabilities[t].  Every text reads the stream `words` from
    its start: gauss() pairs as the precomputed weights at the pair's first word (4 words),
    choice() as CPython's _randbelow_with_getrandbits.  The arithmetic is langdetect's, in its
    order (no fast-math: LLVM neither reassociates nor fuses it).  A text that would read past
    the stream (or start a gauss pair past the weights) gets exhausted[t] = True instead.
    """
    languages = profile.shape[1]
    prob = np.empty(languages)
    word_count = words.shape[0]
    pair_count = first_weight.shape[0]
    for index in range(todo.shape[0]):
        t = todo[index]
        count = counts[t]
        start = starts[t]
        shift = 32  # 32 - count.bit_length()
        rest = count
        while rest > 0:
            shift -= 1
            rest >>= 1
        averaged = probabilities[t]
        for j in range(languages):
            averaged[j] = 0.0
        position = 0
        cached = 0.0
        failed = False
        for trial in range(_TRIALS):
            if trial % 2 == 0:  # gauss() computes a new pair: 4 words
                if position >= pair_count:
                    failed = True
                    break
                weight = first_weight[position]
                cached = cached_weight[position]
                position += 4
            else:  # gauss() returns the value cached by the previous trial
                weight = cached
            for j in range(languages):
                prob[j] = initial
            i = 0
            while True:
                # random.choice: getrandbits(k) until it is below count.
                chosen = count
                while chosen >= count:
                    if position >= word_count:
                        failed = True
                        break
                    chosen = np.int64(words[position]) >> shift
                    position += 1
                if failed:
                    break
                row = profile[all_rows[start + chosen]]
                for j in range(languages):  # Detector._update_lang_prob
                    prob[j] *= weight + row[j]
                if i % _CHECK_EVERY == 0:  # Detector._normalize_prob
                    # The largest p / total is (largest p) / total: division by a positive
                    # number is monotonic, also after rounding.
                    total = prob[0]
                    largest = prob[0]
                    if compensated:
                        compensation = 0.0
                        for j in range(1, languages):
                            x = prob[j]
                            if largest < x:
                                largest = x
                            t_sum = total + x
                            if abs(total) >= abs(x):
                                compensation += (total - t_sum) + x
                            else:
                                compensation += (x - t_sum) + total
                            total = t_sum
                        if compensation != 0.0 and np.isfinite(compensation):
                            total += compensation
                    else:
                        for j in range(1, languages):
                            x = prob[j]
                            if largest < x:
                                largest = x
                            total += x
                    for j in range(languages):  # (a loop of its own vectorises)
                        prob[j] /= total
                    maximum = max(largest / total, 0.0)
                    if maximum > _CONVERGED or i >= _ITERATION_LIMIT:
                        break
                i += 1
            if failed:
                break
            for j in range(languages):
                averaged[j] += prob[j] / _TRIALS
        exhausted[t] = failed


_KERNEL: list = []  # the compiled `_replay_texts`, or None without numba (built once)


def _compiled_kernel():
    """`_replay_texts` compiled with numba (cached on disk next to this module), or None."""
    if not _KERNEL:
        try:
            import numba
        except ImportError:
            _KERNEL.append(None)
        else:
            _KERNEL.append(
                numba.njit(cache=True, nogil=True, error_model="numpy")(_replay_texts)
            )
    return _KERNEL[0]


def langdetect_reference(seed: int) -> Callable[[str], tuple[str, float] | None]:
    """Plain langdetect with this seed, one text at a time: the answers `LanguageIdentifier`
    reproduces, for the tests and benchmarks that compare the two."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
    from langdetect.lang_detect_exception import LangDetectException

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(seed)

    def detect(text: str) -> tuple[str, float] | None:
        detector = factory.create()
        detector.append(text)
        try:
            best = detector.get_probabilities()[0]
            return best.lang, float(best.prob)
        except (LangDetectException, IndexError):
            return None

    return detect
