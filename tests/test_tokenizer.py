"""The caption tokenizer: cleaning, layout of the 77 ids, truncation, determinism, storage."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from openwit.model.tokenizer import EOT_ID, PAD_ID, SOT_ID, Tokenizer, clean_caption  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "a the photo picture of red blue green yellow dog cat bird sitting running on sofa grass beach "
    "with my friends at sunset tree big small old new car city street night light house garden "
    "flower mountain lake river boat two three girl boy man woman playing ball in front"
).split()


def captions(count=400, seed=0):
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        made.append(" ".join(words) + rng.choice(["", ".", "!", " 2019"]))
    return made


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(captions(), vocab_size=1000)


def test_special_ids(tokenizer):
    assert (tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id) == (0, 1, 2)
    assert 259 < tokenizer.vocab_size <= 1000  # 256 bytes + 3 special tokens + merges


def test_round_trip_gives_the_cleaned_lower_cased_text(tokenizer):
    texts = [
        "A Photo of my DOG on the sofa.",
        "Two  girls\tplaying\n ball — at the beach!",
        "unseen words: Zebra, xylophone, 東京 and 🐶",
    ]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)[0]) == clean_caption(text)
    assert clean_caption(texts[0]) == "a photo of my dog on the sofa."
    assert tokenizer.decode_batch(tokenizer.encode(texts)) == [clean_caption(t) for t in texts]


def test_layout_sot_ids_eot_then_zero_padding(tokenizer):
    tokens = tokenizer.encode(["a dog", "a red car on the street at night"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 77)
    for row in tokens:
        length = int((row != PAD_ID).sum())
        assert row[0] == SOT_ID
        assert row[length - 1] == EOT_ID
        assert (row[1 : length - 1] > EOT_ID).all()  # no special ids inside the caption
        assert (row[length:] == PAD_ID).all()
    # Common words of the training captions are single tokens.
    assert int((tokens[0] != PAD_ID).sum()) == 4  # SOT, "a", " dog", EOT


def test_long_caption_is_truncated_with_eot_last(tokenizer):
    long_caption = " ".join(random.Random(1).choice(WORDS) for _ in range(500))
    tokens = tokenizer.encode(long_caption)
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == SOT_ID and tokens[0, -1] == EOT_ID
    assert (tokens[0, 1:-1] > EOT_ID).all()
    assert clean_caption(long_caption).startswith(tokenizer.decode(tokens[0]))


def test_empty_caption(tokenizer):
    tokens = tokenizer.encode("   ")
    assert tokens[0, :3].tolist() == [SOT_ID, EOT_ID, PAD_ID]


def test_special_token_text_in_a_caption_is_ordinary_text(tokenizer):
    text = "a dog <end_of_text> <pad> on grass"
    tokens = tokenizer.encode(text)[0]
    assert int((tokens == EOT_ID).sum()) == 1
    assert tokenizer.decode(tokens) == text


def test_html_entities_and_odd_whitespace_are_cleaned():
    assert clean_caption("  Tom &amp; Jerry&nbsp;at\u2003the\n\nbeach\t ") == "tom & jerry at the beach"
    assert clean_caption("Fish &amp;amp; chips") == "fish & chips"  # escaped twice on the web
    assert clean_caption("cafÃ© LATTE") == "café latte"  # mojibake fixed by ftfy


def test_training_is_deterministic(tokenizer):
    assert Tokenizer.train(captions(), vocab_size=1000).to_str() == tokenizer.to_str()


def test_training_is_deterministic_across_processes(tokenizer):
    # A fresh interpreter has fresh hash seeds and thread scheduling.
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
        from test_tokenizer import captions
        from openwit.model.tokenizer import Tokenizer
        sys.stdout.write(Tokenizer.train(captions(), vocab_size=1000).to_str())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO), str(Path(__file__).parent)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert result.stdout == tokenizer.to_str()


def test_serialised_tokenizer_gives_identical_ids(tokenizer, tmp_path):
    texts = captions(50, seed=7) + ["unseen: Ünïcødé &amp; 🐱"]
    expected = tokenizer.encode(texts)
    assert torch.equal(Tokenizer.from_str(tokenizer.to_str()).encode(texts), expected)
    tokenizer.save(tmp_path / "tokenizer.json")
    assert torch.equal(Tokenizer.from_file(tmp_path / "tokenizer.json").encode(texts), expected)


def test_pickled_tokenizer_encodes_the_same(tokenizer):
    # DataLoader workers get the tokenizer by pickle.
    texts = ["a dog <end_of_text> on grass", "Tom &amp; Jerry"]
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert torch.equal(copy.encode(texts), tokenizer.encode(texts))
    assert copy.context_length == tokenizer.context_length


def test_other_context_length(tokenizer):
    short = Tokenizer.from_str(tokenizer.to_str(), context_length=8)
    tokens = short.encode("a red car on the street at night with my friends")
    assert tokens.shape == (1, 8) and tokens[0, -1] == EOT_ID


def test_rejects_a_vocabulary_without_our_special_ids():
    from tokenizers import Tokenizer as BPETokenizer
    from tokenizers import models

    with pytest.raises(ValueError, match="<pad>"):
        Tokenizer(BPETokenizer(models.BPE()))
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(captions(10), vocab_size=200)
