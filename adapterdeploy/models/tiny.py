"""Tiny randomly initialised BERT-family checkpoints built in code (tests, ``bench --quick``).

Writes a complete local model directory (config.json, model.safetensors, tokenizer.json + HF tokenizer
files) so every code path that takes ``--base DIR`` runs on it, in seconds and without downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TINY_WORDS", "build_tiny_base"]

# A small English vocabulary so that the real datasets' sentences tokenize into something non-trivial.
TINY_WORDS = (
    "the a an and or but not no is are was were be been it this that these those i you he she we they "
    "good bad great terrible movie film story plot actor acting fun boring love hate like best worst "
    "very really too so more most less one two three man woman said says say new year years people "
    "time day world company market percent share shares stock price of to in on for with as at by from "
    "up down out about over after before into than then there here what which who when where why how "
    "all some any each every other same such only just also even still well yes"
).split()


def _build_tokenizer(path: Path, model_type: str) -> int:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-")
    vocab_list = list(dict.fromkeys(specials + list(TINY_WORDS) + letters + ["##" + c for c in letters]))
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        # RoBERTa-style models have one token type: every segment gets type id 0.
        pair="[CLS] $A [SEP] $B:1 [SEP]:1" if model_type in ("bert", "electra") else "[CLS] $A [SEP] [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(str(path / "tokenizer.json"))
    (path / "vocab.txt").write_text("\n".join(vocab_list) + "\n")
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(path / "tokenizer.json"),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(str(path))
    return len(vocab_list)


def build_tiny_base(
    out_dir: str | Path,
    model_type: str = "bert",
    *,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 64,
    seed: int = 0,
    max_position_embeddings: int = 128,
) -> Path:
    """Write a tiny random ``model_type`` encoder (bert, roberta, xlm-roberta, electra) to ``out_dir``."""
    from transformers import AutoConfig, AutoModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _build_tokenizer(out, model_type)
    extra = {}
    if model_type in ("roberta", "xlm-roberta"):
        # RoBERTa offsets positions by padding_idx + 1.
        extra = {"pad_token_id": 0, "type_vocab_size": 1}
        max_position_embeddings += 2
    if model_type == "electra":
        extra = {"embedding_size": hidden_size}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        **extra,
    )
    torch.manual_seed(seed)
    model = AutoModel.from_config(config, attn_implementation="eager")
    model.save_pretrained(str(out), safe_serialization=True)
    return out
