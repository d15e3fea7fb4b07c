"""`wardgate model-server init-demo DIR`: a small demo model built entirely on this machine.

A Llama-architecture causal LM with **random weights** (seeded, so every machine builds the same
model) and a byte-level BPE tokenizer trained here on a few lines of English and Chinese text. It
produces gibberish; it exists so that the gateway runs end to end with no weights at hand and so
that tests have a real Hugging Face model directory to load. Nothing is downloaded.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

DEMO_SEED = 20261121
DEMO_VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
# A plain role-tagged template: the demo model has no chat training, any template would do.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MODEL_CARD = """# wardgate demo model

Built by `wardgate model-server init-demo`. Llama architecture, {parameters:,} parameters,
**random weights** (seed {seed}): it generates meaningless text. The tokenizer is a byte-level BPE
({vocab} tokens) trained locally on the lines in wardgate's `gateway/model_server/demo_corpus.txt`.
Use it to run wardgate end to end and in tests, never to judge output quality.
"""


class DemoDirectoryError(Exception):
    """The target directory cannot take a demo model."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = files("gateway.model_server").joinpath("demo_corpus.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = Tokenizer(models.BPE())
    # Byte level: any text, Chinese included, encodes without unknown tokens.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=DEMO_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        # Big enough for int8 vs fp32 and batching to show in the benchmark, small enough to build
        # in a second and to run a test suite on two CPU cores.
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(DEMO_SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def init_demo(directory: Path) -> Path:
    """Write the demo model into `directory` (created; must not hold anything yet)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a progress bar for a 12 MB write is noise in the logs
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise DemoDirectoryError(f"{directory} exists and is not an empty directory; choose a new one")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "README.md").write_text(
        MODEL_CARD.format(parameters=model.num_parameters(), seed=DEMO_SEED, vocab=len(tokenizer)), encoding="utf-8"
    )
    return directory
