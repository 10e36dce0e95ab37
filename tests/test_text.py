"""Text corpora: byte tokens, the deterministic split, windows, the unigram baseline, local files,
Debian's King James Version and TFDS text datasets (mock data)."""
import math
import shutil

import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.data.text import (KJV_VERSES, SPLIT_BLOCK, decode_bytes, encode_bytes, inputs_targets, load_text,
                           split_lines, unigram_perplexity, windows)


def test_bytes_round_trip_and_range():
    s = "In the beginning, naïve — 1611\n"
    t = encode_bytes(s)
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() < 256
    assert len(t) == len(s.encode("utf-8")) and decode_bytes(t) == s
    with pytest.raises(JaxfaultError, match="byte tokens"):
        decode_bytes(np.array([0, 256]))


def test_windows_make_every_token_a_target_once():
    tokens = np.arange(23)
    w = windows(tokens, 5)
    assert w.shape == (4, 6)
    x, y = inputs_targets(w)
    assert (y == x + 1).all()                       # targets are the next tokens
    assert sorted(y.ravel().tolist()) == list(range(1, 21))   # each target exactly once, in order
    assert windows(tokens, 5, max_windows=2).shape == (2, 6)
    with pytest.raises(JaxfaultError, match="no window"):
        windows(np.arange(3), 5)


def test_split_is_by_blocks_of_lines_and_deterministic():
    lines = [f"line {i}" for i in range(25 * SPLIT_BLOCK + 7)]
    train, val = split_lines(lines)
    val_lines = val.splitlines()
    # blocks 9 and 19 are validation: 2 blocks of SPLIT_BLOCK lines
    assert len(val_lines) == 2 * SPLIT_BLOCK
    assert val_lines[0] == f"line {9 * SPLIT_BLOCK}" and val_lines[-1] == f"line {20 * SPLIT_BLOCK - 1}"
    assert len(train.splitlines()) == len(lines) - 2 * SPLIT_BLOCK
    assert split_lines(lines) == (train, val)


def test_unigram_perplexity_by_hand():
    train = np.array([0, 0, 1])           # add-one counts over vocab 4: 3, 2, 1, 1 of 7
    ev = np.array([0, 1])
    expected = math.exp(-(math.log(3 / 7) + math.log(2 / 7)) / 2)
    assert unigram_perplexity(train, ev, vocab_size=4) == pytest.approx(expected, rel=1e-12)
    # a uniform stream over all bytes: perplexity is the vocabulary size
    u = np.tile(np.arange(256), 40)
    assert unigram_perplexity(u, u) == pytest.approx(256.0, rel=1e-12)


def test_local_text_file(tmp_path):
    lines = [f"verse {i} of the test corpus" for i in range(3 * SPLIT_BLOCK * 10)]
    (tmp_path / "mytext.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = load_text("mytext", data_dir=tmp_path)
    train, val = split_lines(lines)
    assert c.source.startswith("text:") and c.vocab_size == 256
    assert decode_bytes(c.train_tokens) == train and decode_bytes(c.validation_tokens) == val


def test_missing_corpus_is_one_line(tmp_path):
    with pytest.raises(JaxfaultError) as e:
        load_text("nosuchcorpus", data_dir=tmp_path, source="local")
    assert "\n" not in str(e.value) and "nosuchcorpus" in str(e.value)
    with pytest.raises(JaxfaultError, match="source must be"):
        load_text("kjv", source="web")


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian's bible-kjv is not installed (setup.sh installs it)")
def test_king_james_version_from_debian():
    c = load_text("kjv", source="local")
    assert c.source == "debian:bible-kjv"
    text = decode_bytes(c.train_tokens)
    assert text.startswith("In the beginning God created the heaven and the earth.\n")
    lines = len(text.splitlines()) + len(decode_bytes(c.validation_tokens).splitlines())
    assert lines == KJV_VERSES
    # one block in ten is validation: its share of the bytes is near 10 % (blocks differ in length)
    frac = c.validation_tokens.size / (c.train_tokens.size + c.validation_tokens.size)
    assert 0.08 < frac < 0.12
    assert c.train_tokens.max() < 128          # the text is ASCII
    again = load_text("kjv", source="local")
    assert np.array_equal(again.validation_tokens, c.validation_tokens)


def test_tfds_text_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        c = load_text("tiny_shakespeare", source="tfds", data_dir=tmp_path)
    assert c.source == "tfds" and c.train_tokens.size >= 2 and c.validation_tokens.size >= 2
    assert c.train_tokens.dtype == np.int32 and c.train_tokens.max() < 256
    # the mock records' texts are joined by newlines: 3 records, 3 newlines
    assert int((c.train_tokens == ord("\n")).sum()) >= 3
