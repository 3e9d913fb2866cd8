"""The random-stream table: every stream derived from the run seed is named once, and no two streams
(nor two indices of one stream, nor two run seeds) can share a key."""

import itertools

import numpy as np
import pytest

from diffdfkd.runtime import STREAMS, derive_seed, entropy_words, sample_seed, stream_key, stream_seed

# Run seeds and indices at the edges of the word encoding: zero, one word, two and three words.
EDGES = (0, 1, 5, 2**31 - 1, 2**31, 2**32, 2**32 + 7, 2**62 + 3, 2**63 - 1)


def test_stream_ids_are_distinct():
    ids = [s.id for s in STREAMS.values()]
    assert len(set(ids)) == len(ids)


def test_the_word_encoding_is_prefix_free():
    """No integer's words are a prefix of another's, so keys of one length that differ give word lists
    that differ where both have a word (SeedSequence ignores trailing zero words, and alone reads
    ``2**32`` as the two words ``(0, 1)``)."""
    values = sorted({*EDGES, *range(40), *(2**31 + k for k in range(5))})
    encoded = {v: entropy_words((v,)) for v in values}
    for a, b in itertools.permutations(values, 2):
        assert encoded[a] != encoded[b][: len(encoded[a])], (a, b)
    assert all(w < 2**32 for words in encoded.values() for w in words)


def test_no_two_streams_give_the_same_key_or_seed():
    keys = {}
    for name, stream in STREAMS.items():
        for seed in EDGES:
            for indices in itertools.product((0, 1, 2, 5, 2**31, 2**40), repeat=len(stream.indices)):
                key = tuple(entropy_words(stream_key(name, seed, *indices)))
                assert key not in keys, (name, seed, indices, keys.get(key))
                keys[key] = (name, seed, indices)
    seeds = [np.random.SeedSequence(list(k)).generate_state(1, dtype=np.uint64)[0] for k in keys]
    assert len(set(seeds)) == len(seeds)


def test_the_collisions_of_the_streams_before_the_table_are_gone():
    # (seed, 5, 0) was both the epoch-5 data order and the online student's initial weights;
    # (seed, 0, 1) both sample 1's noise and the epoch-0 augmentation.
    assert stream_seed("train_order", 3, 5) != stream_seed("online_student", 3)
    assert stream_seed("train_augment", 3, 0, 0) != sample_seed(3, 1)
    # a run seed above 2**32 no longer reads as two keys: (2**32 + 7, sample 0) vs (7, group 0)
    assert sample_seed(2**32 + 7, 0) != stream_seed("group", 7, 0)


def test_the_synthetic_streams_keep_their_seeds():
    """Sample noise and CutMix groups keep the seeds they had before the table (datasets stay byte-identical):
    for keys below 2**31, the seed of SeedSequence over the plain key."""
    plain = lambda *k: int(np.random.SeedSequence(list(k)).generate_state(1, dtype=np.uint64)[0]) >> 1  # noqa: E731
    assert sample_seed(0, 7) == plain(0, 0, 7) and stream_seed("group", 2, 3) == plain(2, 1, 3)
    assert stream_seed("online_student", 4) == plain(4, 5, 0) == derive_seed(4, 5, 0)


def test_a_stream_is_called_by_its_name_with_its_indices():
    with pytest.raises(KeyError, match="unknown random stream 'nope'"):
        stream_seed("nope", 0)
    with pytest.raises(TypeError, match="takes the indices"):
        stream_seed("train_augment", 0, 1)
