"""Tokenizers: a tiny BPE built locally for tests, or a real GLM tokenizer from a directory.

The tiny tokenizer carries every special token string of the released GLM-4.1V tokenizer (with
its own, small ids), so prompts, the chat template and the processor behave as at scale.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ASSETS = Path(__file__).parent / "assets"
TINY_VOCAB_SIZE = 2048

# Order is the order of ids in the tiny tokenizer (the released one uses 151329..).
SPECIAL_TOKENS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<|image|>", "<|video|>", "<think>", "</think>", "<answer>", "</answer>",
    "<|begin_of_box|>", "<|end_of_box|>",
]

# GLM-4.1V chat format. Image/video items render as one placeholder that the processor expands
# (HF's convention, so AutoProcessor and vLLM read our checkpoints). Earlier assistant turns
# keep only their answer: the thinking is stripped from history, as in the paper's data.
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for msg in messages %}"
    "{%- if msg.role == 'system' %}<|system|>{{- '\\n' }}"
    "{%- elif msg.role == 'user' %}<|user|>{{- '\\n' }}"
    "{%- elif msg.role == 'assistant' %}<|assistant|>{{- '\\n' }}"
    "{%- elif msg.role == 'observation' %}<|observation|>{{- '\\n' }}"
    "{%- endif %}"
    "{%- if msg.content is string %}"
    "{%- if msg.role == 'assistant' and not loop.last and '</think>' in msg.content %}"
    "{{- msg.content.split('</think>')[-1].strip() }}"
    "{%- else %}{{- msg.content }}{%- endif %}"
    "{%- else %}"
    "{%- for item in msg.content %}"
    "{%- if item.type == 'image' or 'image' in item %}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif item.type == 'video' or 'video' in item %}<|begin_of_video|><|video|><|end_of_video|>"
    "{%- elif item.type == 'text' %}{{- item.text }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{{- '\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens the model config, processor and chat code need."""

    eos: int
    gmask: int
    sop: int
    system: int
    user: int
    assistant: int
    observation: int
    image_start: int
    image_end: int
    video_start: int
    video_end: int
    image: int
    video: int
    think_start: int
    think_end: int
    answer_start: int
    answer_end: int
    box_start: int
    box_end: int

    @classmethod
    def from_tokenizer(cls, tok: PreTrainedTokenizerFast) -> "SpecialTokens":
        names = {
            "eos": "<|endoftext|>", "gmask": "[gMASK]", "sop": "<sop>", "system": "<|system|>",
            "user": "<|user|>", "assistant": "<|assistant|>", "observation": "<|observation|>",
            "image_start": "<|begin_of_image|>", "image_end": "<|end_of_image|>",
            "video_start": "<|begin_of_video|>", "video_end": "<|end_of_video|>",
            "image": "<|image|>", "video": "<|video|>", "think_start": "<think>",
            "think_end": "</think>", "answer_start": "<answer>", "answer_end": "</answer>",
            "box_start": "<|begin_of_box|>", "box_end": "<|end_of_box|>",
        }
        vocab = tok.get_vocab()
        missing = [s for s in names.values() if s not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks GLM special tokens: {missing}")
        return cls(**{field: vocab[s] for field, s in names.items()})

    @property
    def turn_ends(self) -> tuple[int, int, int]:
        """Where an assistant turn ends: end of text, or the next user or observation turn. A fresh
        model's generation_config declares these; a response's text drops its final one."""
        return (self.eos, self.user, self.observation)

    def stop_ids(self, declared: int | list[int] | None = None) -> list[int]:
        """Where generation stops: the turn ends plus the eos ids a checkpoint's generation_config
        declares (the released GLM-4.1V adds 151348). vLLM stops at the declared ones by itself;
        naming them for HF generate and SFT's evaluation too keeps every engine stopping alike."""
        extra = [declared] if isinstance(declared, int) else list(declared or [])
        return list(dict.fromkeys([*self.turn_ends, *extra]))

    @property
    def vision_ids(self) -> tuple[int, ...]:
        """Image/video placeholders and markers, which only the processor may place. Engines and
        decoders must never generate them: transformers and vLLM count `<|image|>` by id, so a
        sampled one fed back as prompt (forced answering, π_old) has no features and the forward
        fails. The order is that of `VISION_TOKEN_FIELDS`."""
        return tuple(getattr(self, name) for name in VISION_TOKEN_FIELDS)


# SpecialTokens fields of the vision tokens; `<field>_token_id` is the same id in a Glm4v config.
VISION_TOKEN_FIELDS = ("image_start", "image_end", "image", "video_start", "video_end", "video")


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    # Byte-level BPE is deterministic for a fixed corpus and vocab size, so every process builds
    # the same ids; caching keeps it to one ~0.2 s training per process.
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train([str(ASSETS / "corpus.txt")], trainer)
    return bpe.to_str()


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The test/demo tokenizer: ~2k byte-level BPE tokens plus the GLM special tokens."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """`"tiny"` builds the tiny tokenizer; anything else is a local tokenizer directory."""
    if str(path) == "tiny":
        return build_tiny_tokenizer()
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    SpecialTokens.from_tokenizer(tok)  # fail early on a tokenizer that is not GLM's
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    return tok
