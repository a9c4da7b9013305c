"""Layer maps."""

import pytest

from hf_distill import parse_layer_map, resolve_layer_map
from hf_distill.alignment import attention_layer_pairs


@pytest.mark.parametrize(
    "student, teacher, want",
    [(2, 4, [(1, 2), (2, 4)]), (3, 4, [(1, 1), (2, 3), (3, 4)]), (4, 12, [(1, 3), (2, 6), (3, 9), (4, 12)])],
)
def test_uniform_map_follows_tinybert(student, teacher, want):
    assert resolve_layer_map("uniform", student, teacher) == want


def test_last_explicit_and_embeddings():
    assert resolve_layer_map("last", 2, 6) == [(2, 6)]
    assert resolve_layer_map("2:6, 1:3", 2, 6, include_embeddings=True) == [(0, 0), (1, 3), (2, 6)]
    assert resolve_layer_map([(1, 1), [2, 5]], 2, 6) == [(1, 1), (2, 5)]
    assert attention_layer_pairs([(0, 0), (1, 3)]) == [(1, 3)]


@pytest.mark.parametrize("bad", ["", "1:2:3", "a:b", "1:-2", [(1,)]])
def test_parse_errors(bad):
    with pytest.raises(ValueError, match="layer_map"):
        parse_layer_map(bad)
