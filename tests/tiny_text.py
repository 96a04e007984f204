"""Offline tiny tokenizers and text encoders for end-to-end diffusers pipeline tests.

Nothing here touches the network: the tokenizers are built from an in-memory vocabulary (the
``tokenizers`` models behind the real ``transformers`` classes: CLIP's byte-level BPE, T5's
Unigram, Llama-3's byte-level BPE with its special tokens) and the text encoders from small
``transformers`` configs with random weights. They do what the pipelines call at run time:
``padding="max_length"``, truncation, attention masks, ``padding="longest"`` plus
``batch_decode`` for the truncation warning, ``hidden_states`` / ``pooler_output`` /
``text_embeds``, and the HunyuanVideo prompt template (its prefix is exactly
``DEFAULT_PROMPT_TEMPLATE["crop_start"]`` = 95 tokens long, as with the released Llama-3
tokenizer, so the pipeline's crop removes exactly the system prompt).
"""

from __future__ import annotations

import string
from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

# whole-word tokens of the tokenizers (anything else still tokenizes: CLIP and Llama fall back to
# bytes, T5 to letters or <unk>)
WORDS = (
    "a an the of on in with and cat dog photo walks grass realistic red blue astronaut riding "
    "horse painting"
).split()

# ----- tokenizers -----------------------------------------------------------------------------
_BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())  # GPT-2's printable stand-ins for bytes


def _merge_chains(words: Iterable[list[str]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Left-to-right BPE merges that build each word (a list of initial symbols) into one token;
    every intermediate token is added to ``vocab``."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for symbols in words:
        head = symbols[0]
        for sym in symbols[1:]:
            pair = (head, sym)
            head = head + sym
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(head, len(vocab))
    return merges


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """CLIP's byte-level BPE (lowercase, ``</w>`` word ends, <|startoftext|> ... <|endoftext|>,
    padded with <|endoftext|>) over the 256 bytes plus the whole words of :data:`WORDS`."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for sym in _BYTES + [b + "</w>" for b in _BYTES]:
        vocab.setdefault(sym, len(vocab))
    merges = _merge_chains(([*w[:-1], w[-1] + "</w>"] for w in WORDS if len(w) > 1), vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """T5's Unigram (SentencePiece ``▁`` word starts; <pad> = 0, </s> = 1, <unk> = 2): letters,
    digits and punctuation, and the whole words of :data:`WORDS`. Also UMT5's (Wan)."""
    scores = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    for c in string.ascii_letters + string.digits + string.punctuation:
        scores += [(c, -6.0), ("▁" + c, -5.0)]
    scores += [("▁" + w, -1.0) for w in WORDS if len(w) > 1]
    return T5TokenizerFast(vocab=scores, extra_ids=0, model_max_length=model_max_length)


# Llama 3's pre-tokenizer split (tokenizer.json of Meta-Llama-3 / llava-llama-3, HunyuanVideo's)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def llama3_tokenizer(template: str | None = None, model_max_length: int = 4096):
    """A Llama-3-style byte-level BPE (``PreTrainedTokenizerFast`` like HunyuanVideo's): Llama 3's
    split regex, its header / turn special tokens, <|begin_of_text|> prepended, padded with
    <|end_of_text|>. Every word of ``template`` (default: HunyuanVideo's prompt template) and
    of :data:`WORDS` is one token, as in the released vocabulary, so the template's prefix has
    the same 95 tokens as there."""
    if template is None:
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import (
            DEFAULT_PROMPT_TEMPLATE,
        )

        template = DEFAULT_PROMPT_TEMPLATE["template"]
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    text = template.replace("{}", " ".join(WORDS)) + " " + " ".join(WORDS)
    for special in LLAMA3_SPECIALS:
        text = text.replace(special, "\x00")
    pieces = [p for part in text.split("\x00") for p, _ in pre.pre_tokenize_str(part)]
    vocab = {s: i for i, s in enumerate(LLAMA3_SPECIALS)}
    for sym in _BYTES:
        vocab.setdefault(sym, len(vocab))
    merges = _merge_chains((list(p) for p in dict.fromkeys(pieces) if len(p) > 1), vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre
    backend.decoder = decoders.ByteLevel()
    bos = LLAMA3_SPECIALS[0]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        additional_special_tokens=list(LLAMA3_SPECIALS[2:]),
        model_max_length=model_max_length,
    )


# ----- text encoders --------------------------------------------------------------------------
def _seeded(seed: int):
    torch.manual_seed(seed)


def clip_text_encoder(
    tokenizer: CLIPTokenizer,
    hidden_size: int,
    projection_dim: int | None = None,
    layers: int = 2,
    seed: int = 0,
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A tiny CLIP text tower: ``CLIPTextModelWithProjection`` when ``projection_dim`` is given
    (SD3: ``text_embeds`` of that size), else ``CLIPTextModel`` (``pooler_output`` of
    ``hidden_size``: FLUX, HunyuanVideo). Pools at the first <|endoftext|>, like the real one."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    _seeded(seed)
    cls = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return cls(config).eval()


def t5_encoder(tokenizer: T5TokenizerFast, d_model: int, seed: int = 0) -> T5EncoderModel:
    """A tiny T5 encoder (SD3, FLUX, PixArt-Sigma): ``last_hidden_state`` of ``d_model``."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 2,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    _seeded(seed)
    return T5EncoderModel(config).eval()


def umt5_encoder(tokenizer: T5TokenizerFast, d_model: int, seed: int = 0) -> UMT5EncoderModel:
    """A tiny UMT5 encoder (Wan): ``last_hidden_state`` of ``d_model``."""
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 2,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    _seeded(seed)
    return UMT5EncoderModel(config).eval()


def llama_encoder(tokenizer, hidden_size: int, layers: int = 3, seed: int = 0) -> LlamaModel:
    """A tiny Llama decoder used as an encoder (HunyuanVideo reads ``hidden_states[-3]``: with
    3 layers, the output of the first)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _seeded(seed)
    return LlamaModel(config).eval()
