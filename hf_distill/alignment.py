"""Layer maps between a student and a teacher.

Layers are numbered as in the `hidden_states` tuple of a 🤗 model: `0` is the embedding output and `1..L` are the
outputs of the `L` transformer blocks. Attention maps exist for blocks `1..L` only (block `i` is `attentions[i-1]`).
"""

from __future__ import annotations

from collections.abc import Sequence

LayerPairs = list[tuple[int, int]]
LAYER_MAP_STRATEGIES = ("uniform", "last")


def parse_layer_map(layer_map: str | Sequence[Sequence[int]]) -> str | LayerPairs:
    """
    Normalise a layer map given as a strategy name, a `"s:t,s:t"` string or a sequence of `(s, t)` pairs.

    Args:
        layer_map (`str` or sequence of pairs): `"uniform"`, `"last"`, `"1:2,2:4"` or `[(1, 2), (2, 4)]`.

    Returns:
        The strategy name, or a list of `(student_layer, teacher_layer)` pairs.

    Raises:
        `ValueError`: when the map cannot be parsed; the message names the `layer_map` field.
    """
    if isinstance(layer_map, str):
        text = layer_map.strip()
        if text in LAYER_MAP_STRATEGIES:
            return text
        items = [item for item in text.replace(" ", "").split(",") if item]
        try:
            pairs = [tuple(int(x) for x in item.split(":")) for item in items]
        except ValueError:
            pairs = []
    else:
        try:
            pairs = [tuple(int(x) for x in pair) for pair in layer_map]
        except (TypeError, ValueError):
            pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(
            f"layer_map={layer_map!r} is not valid: use 'uniform', 'last', or student:teacher pairs such as '1:2,2:4'."
        )
    if any(s < 0 or t < 0 for s, t in pairs):
        raise ValueError(f"layer_map={layer_map!r} has a negative layer index; layers are numbered from 0.")
    return [(int(s), int(t)) for s, t in pairs]


def resolve_layer_map(
    layer_map: str | Sequence[Sequence[int]],
    num_student_layers: int,
    num_teacher_layers: int,
    include_embeddings: bool = False,
) -> LayerPairs:
    """
    Turn a layer map into explicit `(student_layer, teacher_layer)` pairs and check they exist.

    `"uniform"` maps student block `i` to teacher block `round(i * L_T / L_S)` (TinyBERT's `g(m) = m * N / M`),
    `"last"` maps the last block to the last block. `include_embeddings` adds the pair `(0, 0)`.

    Args:
        layer_map: See [`parse_layer_map`].
        num_student_layers (`int`): Number of student blocks `L_S`.
        num_teacher_layers (`int`): Number of teacher blocks `L_T`.
        include_embeddings (`bool`): Also match the embedding outputs.

    Returns:
        `list[tuple[int, int]]`: the pairs, sorted by student layer.

    Raises:
        `ValueError`: when a pair is outside `0..L_S` or `0..L_T`.
    """
    parsed = parse_layer_map(layer_map)
    if parsed == "uniform":
        pairs = [(i, int(i * num_teacher_layers / num_student_layers + 0.5)) for i in range(1, num_student_layers + 1)]
    elif parsed == "last":
        pairs = [(num_student_layers, num_teacher_layers)]
    else:
        pairs = list(parsed)
    if include_embeddings and (0, 0) not in pairs:
        pairs.insert(0, (0, 0))
    for s, t in pairs:
        if not (0 <= s <= num_student_layers and 0 <= t <= num_teacher_layers):
            raise ValueError(
                f"layer_map pair {s}:{t} is out of range: the student has layers 0..{num_student_layers} and the "
                f"teacher 0..{num_teacher_layers} (0 is the embedding output). Fix `layer_map`."
            )
    return sorted(dict.fromkeys(pairs))


def attention_layer_pairs(pairs: LayerPairs) -> LayerPairs:
    """Keep the pairs that have attention maps (blocks `>= 1` on both sides)."""
    return [(s, t) for s, t in pairs if s > 0 and t > 0]
