# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""A tiny, offline Qwen2.5-style tokenizer for tests and tiny checkpoints."""

import json
import random

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from .processing_hydrax import HYDRAX_CHAT_TEMPLATE


# Qwen2.5's special tokens, in Qwen2.5's id order (151643 ... 151664 in the real vocabulary).
QWEN2_5_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]

_CORPUS = """\
Hydra-X is a unified multimodal model. It answers questions about images and videos, draws images and videos from
text, and edits images from an instruction. A single visual tokenizer turns pictures into tokens that a language
model can read and write. Describe this image in detail. What is happening in the video? How many people are in the
picture, and what are they doing? The cat sits on a red sofa next to a window; sunlight falls across the floor.
A photo of an astronaut riding a horse on the moon, highly detailed, 4k. Generate a video of waves breaking on a
rocky shore at sunset. Make the sky purple and add a full moon. Remove the car from the street. Turn the dog into a
watercolor painting. The answer is 42. Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 17 64 100 256 512 1024 2048.
User: Can you help me? Assistant: Of course! Here is what I see: a bicycle, two trees, a blue sky, and a bird.
Questions, answers, captions and instructions are written in plain text; images, videos and their sizes are
expressed with special placeholder tokens that the processor expands before tokenisation.
"""

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "ta",
    "shi",
    "po",
    "vel",
    "dra",
    "hy",
    "x",
    "ar",
    "en",
    "is",
    "on",
    "ex",
    "im",
    "vid",
    "pix",
    "tok",
    "gen",
    "sem",
    "vit",
    "flow",
    "lat",
    "ent",
    "ion",
    "ing",
    "ed",
    "er",
    "al",
    "ic",
    "ous",
]


def _training_corpus(num_words: int = 30000) -> list[str]:
    """The embedded text plus deterministic pseudo-words, so that BPE can reach large vocabularies offline."""
    rng = random.Random(0)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(num_words)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, num_words, 12)]
    return _CORPUS.splitlines() * 20 + lines


def build_tiny_qwen2_tokenizer(
    vocab_size: int = 1024, model_max_length: int = 32768, padding_side: str = "right"
) -> Qwen2TokenizerFast:
    r"""
    Builds, fully offline, a small byte-level BPE `Qwen2TokenizerFast` that behaves like Qwen2.5's: same
    pre-tokenisation, same special tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|vision_start|>`,
    `<|vision_end|>`, `<|image_pad|>`, `<|video_pad|>`, ... in Qwen2.5's order, placed after the regular tokens),
    `eos_token="<|im_end|>"`, `pad_token="<|endoftext|>"`, and the Hydra-X chat template. `len(tokenizer)` is exactly
    `vocab_size`. Meant for tests and tiny checkpoints; real checkpoints use Qwen2.5's own tokenizer.

    Example:

    ```python
    >>> from processing_hydrax import build_tiny_qwen2_tokenizer
    >>> tokenizer = build_tiny_qwen2_tokenizer(vocab_size=512)
    >>> len(tokenizer), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    (512, 490)
    ```
    """
    num_regular = vocab_size - len(QWEN2_5_SPECIAL_TOKENS)
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if num_regular < len(byte_alphabet):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the byte alphabet needs {len(byte_alphabet)} tokens and Qwen2.5 "
            f"has {len(QWEN2_5_SPECIAL_TOKENS)} special tokens; pass vocab_size >= "
            f"{len(byte_alphabet) + len(QWEN2_5_SPECIAL_TOKENS)}."
        )
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_regular, initial_alphabet=byte_alphabet, special_tokens=[], show_progress=False
    )
    backend.train_from_iterator(_training_corpus(), trainer)
    vocab = backend.get_vocab()
    if len(vocab) != num_regular:
        raise ValueError(
            f"The embedded corpus only supports {len(vocab) + len(QWEN2_5_SPECIAL_TOKENS)} tokens; pass a smaller "
            f"vocab_size than {vocab_size}."
        )
    merges = [
        tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
        for merge in json.loads(backend.to_str())["model"]["merges"]
    ]
    vocab.update({token: num_regular + i for i, token in enumerate(QWEN2_5_SPECIAL_TOKENS)})
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=QWEN2_5_SPECIAL_TOKENS[1:],
        errors="replace",
        model_max_length=model_max_length,
        padding_side=padding_side,
        chat_template=HYDRAX_CHAT_TEMPLATE,
    )
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"Built a tokenizer of {len(tokenizer)} tokens instead of {vocab_size}.")
    return tokenizer


__all__ = ["QWEN2_5_SPECIAL_TOKENS", "build_tiny_qwen2_tokenizer"]
