"""``standalone/<task>/``: one task as a Hugging Face model folder that other runtimes load as is.

Layout (what optimum's ``ORTModelForSequenceClassification``, transformers.js and onnxruntime-web look for)::

    config.json               the base's config + id2label / label2id / num_labels / problem_type
    tokenizer.json            the deployment's tokenizer, set to tokenize as the deployment does:
                              truncation longest_first at the task's max_length, padding to the batch's
                              longest row (never to a fixed length)
    tokenizer_config.json     tokenizer class, special tokens, model_max_length = max_length
    special_tokens_map.json
    onnx/model.onnx           fp32: input_ids, attention_mask, token_type_ids -> logits
                              (a tagging task: logits per token, ``*ForTokenClassification`` in config.json,
                              what ``ORTModelForTokenClassification`` and the token-classification pipeline load)
    onnx/model_quantized.onnx int8 (dynamic), the name transformers.js loads for ``dtype: "q8"``

Each ONNX file carries metadata props (``task``, ``labels``, ``max_length``, ``featurizer_fingerprint``,
``parity``, ``precision``, ``problem_type``, ``producer_version``) so a graph found alone still says what it is.
Torch-free: only json, ``tokenizers`` and ``onnx`` (for the metadata).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterdeploy import __version__
from adapterdeploy.config import TOKEN_CLASSIFICATION
from adapterdeploy.errors import ArtifactError

__all__ = [
    "GRAPH_FILES",
    "HF_FILES",
    "FolderSource",
    "hf_config",
    "metadata_props",
    "stamp_metadata",
    "write_folder_files",
    "write_tokenizer_files",
]

# precision -> file inside the folder (transformers.js: dtype fp32 -> model.onnx, q8 -> model_quantized.onnx)
GRAPH_FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_quantized.onnx"}
HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# model_type -> the slow tokenizer class name HF writes in tokenizer_config.json (its *Fast twin reads tokenizer.json)
_TOKENIZER_CLASS = {
    "bert": "BertTokenizer",
    "roberta": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "electra": "ElectraTokenizer",
    "distilbert": "DistilBertTokenizer",
    "deberta-v2": "DebertaV2Tokenizer",
}
# Conventional special tokens, BERT-style and RoBERTa-style, as tokenizer_config.json names them.
_SPECIAL = {
    "cls_token": ("[CLS]", "<s>"),
    "sep_token": ("[SEP]", "</s>"),
    "pad_token": ("[PAD]", "<pad>"),
    "unk_token": ("[UNK]", "<unk>"),
    "mask_token": ("[MASK]", "<mask>"),
    "bos_token": ("<s>",),
    "eos_token": ("</s>",),
}


def hf_config(base_config: Mapping[str, Any], labels: Sequence[str], problem_type: str) -> dict[str, Any]:
    """The base's config.json with this task's labels; regression gets num_labels 1 and no label names."""
    cfg = {k: v for k, v in base_config.items() if k not in ("id2label", "label2id", "_name_or_path")}
    if problem_type == "regression":
        cfg.update(num_labels=1, problem_type="regression", id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    else:
        cfg.update(
            num_labels=len(labels),
            problem_type=problem_type,
            id2label={str(i): str(label) for i, label in enumerate(labels)},
            label2id={str(label): i for i, label in enumerate(labels)},
        )
    token = problem_type == TOKEN_CLASSIFICATION
    if token:  # transformers has no problem_type for token classification; the architecture says it
        cfg.pop("problem_type", None)
    cfg["architectures"] = [_architecture(str(cfg.get("model_type", "bert")), token)]
    return cfg


def _architecture(model_type: str, token: bool = False) -> str:
    name = {
        "bert": "Bert",
        "roberta": "Roberta",
        "xlm-roberta": "XLMRoberta",
        "electra": "Electra",
        "distilbert": "DistilBert",
    }.get(model_type, "Bert")
    return f"{name}ForTokenClassification" if token else f"{name}ForSequenceClassification"


def write_tokenizer_files(
    src: Path, folder: Path, *, max_length: int, model_type: str, pad_id: int | None = None
) -> None:
    """tokenizer.json configured like the runtime (tokenization.py), tokenizer_config.json, special_tokens_map.json.

    The runtime truncates longest_first at max_length and pads each batch to its longest row; a fixed
    ``"padding": {"strategy": {"Fixed": 128}}`` copied from the base made every call 128 tokens long.
    """
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(src))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise ArtifactError(f"cannot read the tokenizer {src}: {exc}") from exc
    special = _special_tokens(tok)
    pad_token = special.get("pad_token")
    if pad_id is None:
        pad_id = tok.token_to_id(pad_token) if pad_token else None
    pad_id = int(pad_id or 0)
    pad_token = pad_token or tok.id_to_token(pad_id) or "[PAD]"
    tok.enable_truncation(int(max_length), strategy="longest_first", direction="right")
    tok.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)  # no length: batch-longest
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": _TOKENIZER_CLASS.get(model_type, "PreTrainedTokenizerFast"),
        "model_max_length": int(max_length),
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "do_lower_case": _lowercases(tok),
        **special,
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special)


def _special_tokens(tok: Any) -> dict[str, str]:
    vocab = tok.get_vocab(with_added_tokens=True)
    found = {}
    for role, candidates in _SPECIAL.items():
        token = next((t for t in candidates if t in vocab), None)
        if token is not None:
            found[role] = token
    return found


def _lowercases(tok: Any) -> bool:
    normalizer = json.loads(tok.to_str()).get("normalizer") or {}
    parts = normalizer.get("normalizers", [normalizer])
    return any(p.get("type") == "Lowercase" or p.get("lowercase") is True for p in parts if isinstance(p, dict))


def stamp_metadata(path: Path, props: Mapping[str, Any]) -> None:
    """Set ONNX metadata props (values JSON-encoded unless already strings) and rewrite the file."""
    import onnx

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    model.producer_name, model.producer_version = "adapterdeploy", __version__
    onnx.save(model, str(path))


def metadata_props(
    *,
    task: str,
    labels: Sequence[str],
    problem_type: str,
    max_length: int,
    fingerprint: str,
    precision: str,
    parity: Mapping[str, Any],
) -> dict[str, Any]:
    """The metadata every standalone graph carries."""
    return {
        "task": task,
        "labels": list(labels),
        "problem_type": problem_type,
        "max_length": int(max_length),
        "featurizer_fingerprint": fingerprint,
        "precision": precision,
        "parity": dict(parity),
        "producer_version": __version__,
    }


@dataclass(frozen=True)
class FolderSource:
    """What every task folder of one deployment shares: its tokenizer, base config, max length, fingerprint."""

    tokenizer: Path
    base_config: Mapping[str, Any]
    max_length: int
    model_type: str
    pad_id: int | None
    fingerprint: str

    @classmethod
    def of_deployment(cls, root: Path, manifest: Any) -> FolderSource:
        """From a deployment's manifest; the base config is the one recorded at export (``base.config``),
        else the base directory's config.json when it is still there, else the fields the manifest keeps."""
        base = manifest.base
        config = dict(base.config)
        if not config:
            path = Path(base.path) / "config.json"
            config = (
                json.loads(path.read_text(encoding="utf-8"))
                if base.path and path.is_file()
                else {
                    "model_type": base.model_type,
                    "hidden_size": base.hidden_size,
                    "num_hidden_layers": base.num_layers,
                    "num_attention_heads": base.num_heads,
                    "max_position_embeddings": base.max_position_embeddings,
                    "layer_norm_eps": base.layer_norm_eps,
                    "type_vocab_size": base.type_vocab_size,
                    "pad_token_id": base.pad_token_id,
                    **({"vocab_size": base.vocab_size} if base.vocab_size else {}),
                }
            )
        return cls(
            tokenizer=root / manifest.tokenizer.file,
            base_config=config,
            max_length=int(manifest.tokenizer.max_length),
            model_type=base.model_type,
            pad_id=base.pad_token_id,
            fingerprint=manifest.featurizer.fingerprint,
        )


def write_folder_files(folder: Path, source: FolderSource, *, labels: Sequence[str], problem_type: str) -> None:
    """Everything of the folder but the ONNX graphs."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", hf_config(source.base_config, labels, problem_type))
    write_tokenizer_files(
        source.tokenizer, folder, max_length=source.max_length, model_type=source.model_type, pad_id=source.pad_id
    )


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
