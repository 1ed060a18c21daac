"""Import a PEFT LoRA / IA3 adapter directory (``save_pretrained`` output) as a task checkpoint.

Reads ``adapter_config.json`` + ``adapter_model.safetensors`` (or a pickle-free ``adapter_model.bin`` through
``torch.load(weights_only=True)``). The weights are the truth: module, layer and rank come from the tensor
names and shapes; the config is checked against them and gives alpha / rsLoRA / the IA3 feed-forward set.

Conversion (exact, see models/lora.py for the runtime semantics):
    LoRA   lora_A [r, in], lora_B [out, r]  ->  lora_a = A^T [in, R], lora_b = s * B^T [R, out]
           s = alpha / r (alpha / sqrt(r) with use_rslora), R = the task's largest rank (zero-padded)
    IA3    ia3_l [out, 1] (output scaling) or [1, in] (feed-forward input scaling) -> ia3_out / ia3_in = l - 1
    heads  BERT ``classifier`` on the base pooler -> pooling "pooler"; with a LoRA'd or saved pooler, the
           pooler becomes the head's hidden tanh layer (merged weights); RoBERTa / XLM-R / ELECTRA
           ``classifier.dense`` + ``out_proj`` -> pooling "cls", one hidden layer (tanh; gelu for ELECTRA).
``lora_dropout`` is inactive at inference and ignored. DoRA, LoRA biases, prompt / prefix tuning and every
other PEFT type are refused by name.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adapterdeploy.config import AdapterConfig, HeadConfig, PeftSpec
from adapterdeploy.errors import ArtifactError, ConfigError, FingerprintMismatchError, UnsupportedAdapterError
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import TaskCheckpoint
from adapterdeploy.models.lora import module_dims
from adapterdeploy.validation import read_json_object

__all__ = ["MODULE_PATHS", "import_peft", "verify_peft"]

# Module path inside one encoder layer -> our module name (config.LORA_MODULES).
MODULE_PATHS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}
MODEL_PREFIX = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta.", "electra": "electra."}
SUPPORTED_TYPES = ("LORA", "IA3")
# LoRA config fields that change the math in ways we do not run: (field, the value that is fine, name).
LORA_REFUSED = (
    ("use_dora", False, "DoRA (use_dora=true)"),
    ("lora_bias", False, "LoRA bias (lora_bias=true)"),
    ("fan_in_fan_out", False, "fan_in_fan_out=true (Conv1D layers; BERT-family models have none)"),
    ("use_qalora", False, "QA-LoRA (use_qalora=true)"),
    ("use_bdlora", None, "BD-LoRA (use_bdlora)"),
    ("alora_invocation_tokens", None, "activated LoRA (alora_invocation_tokens)"),
    ("arrow_config", None, "Arrow routing (arrow_config)"),
    ("layer_replication", None, "layer_replication"),
    ("target_parameters", None, "target_parameters (LoRA on raw parameters)"),
    ("trainable_token_indices", None, "trainable_token_indices (trained embedding rows)"),
)
_LAYER_KEY = re.compile(
    r"^(?P<prefix>(?:[a-z_]+\.)?)encoder\.layer\.(?P<layer>\d+)\.(?P<path>.+)\."
    r"(?P<leaf>lora_A\.weight|lora_B\.weight|ia3_l|lora_embedding_A|lora_embedding_B|"
    r"lora_magnitude_vector(?:\.weight)?)$"
)
_POOLER_LORA = re.compile(r"^(?P<prefix>(?:[a-z_]+\.)?)pooler\.dense\.(?P<leaf>lora_A\.weight|lora_B\.weight|ia3_l)$")


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise ArtifactError(
            f"{adapter_dir} has no adapter_config.json: pass the directory PEFT's save_pretrained wrote"
        )
    return read_json_object(cfg_file)


def _read_weights(adapter_dir: Path) -> dict[str, Tensor]:
    st, pt = adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_model.bin"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(f"cannot read {st}: {exc}") from exc
    if pt.is_file():
        import pickle

        try:  # weights_only: tensors and plain containers only, never arbitrary pickled objects
            sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
            raise ArtifactError(
                f"{pt} cannot be loaded safely (torch.load(weights_only=True) refused it: "
                f"{(str(exc).splitlines() or [''])[0][:160]}); re-save the adapter with "
                "save_pretrained(..., safe_serialization=True) to get adapter_model.safetensors"
            ) from exc
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise ArtifactError(f"{pt} is not a state dict of tensors; re-save it with safe_serialization=True")
        return sd
    raise ArtifactError(f"{adapter_dir} has neither adapter_model.safetensors nor adapter_model.bin")


def _check_type(cfg: dict[str, Any]) -> str:
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type not in SUPPORTED_TYPES:
        raise UnsupportedAdapterError(
            f"PEFT type {cfg.get('peft_type')!r} (adapter_config.json 'peft_type') is not supported: only LORA and "
            "IA3 adapters change the encoder in a way this featurizer runs; prompt / prefix / p-tuning, AdaLoRA, "
            "LoHa, LoKr, OFT and the rest are refused. Train a LoRA or IA3 adapter, or a bottleneck adapter "
            "('adapterdeploy train')"
        )
    if peft_type == "LORA":
        for key, fine, name in LORA_REFUSED:
            value = cfg.get(key, fine)
            if value not in (fine, None, False, [], {}):
                raise UnsupportedAdapterError(
                    f"{name} in adapter_config.json is not supported (field {key!r} = {value!r}); plain LoRA and "
                    "rsLoRA are: retrain without it"
                )
    if cfg.get("bias", "none") not in ("none", None):
        raise UnsupportedAdapterError(
            f"adapter_config.json 'bias' = {cfg['bias']!r}: the adapter retrained the base's biases, which a shared "
            "featurizer cannot hold per task; retrain with bias='none'"
        )
    return peft_type


def _check_target_names(cfg: dict[str, Any]) -> None:
    """Every target_modules / feedforward_modules name must address one of the linear layers we run."""
    known = {
        ".".join(p.split(".")[-n:]) for p in [*MODULE_PATHS, "pooler.dense"] for n in range(1, len(p.split(".")) + 1)
    }
    for field in ("target_modules", "feedforward_modules"):
        names = cfg.get(field)
        if names is None or isinstance(names, str):  # a regex string: the weights' module names are checked instead
            continue
        bad = sorted(str(n) for n in names if str(n) not in known)
        if bad:
            raise ConfigError(
                f"adapter_config.json {field!r} names {bad}, which are not linear layers this runtime can adapt; "
                f"supported names: {sorted(known)} (attention query/key/value/output and FFN dense layers); "
                "retrain with those target_modules"
            )


def _pattern_value(patterns: dict[str, Any], module_name: str, default: Any) -> Any:
    # Mirrors peft.utils.other.get_pattern_key (a 6-line regex loop): importing peft here would pull in
    # accelerate and a second copy of the model code for one lookup.
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return patterns[key]
    return default


def _split(weights: dict[str, Tensor], model_type: str) -> tuple[dict, dict, dict[str, Tensor]]:
    """(layer deltas {(layer, module): {leaf: tensor}}, pooler deltas {leaf: t}, head tensors {name: t})."""
    expected = MODEL_PREFIX[model_type]
    layer_deltas: dict[tuple[int, str], dict[str, Tensor]] = {}
    pooler: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    for full, t in weights.items():
        key = full.removeprefix("base_model.model.")
        m = _LAYER_KEY.match(key) or _POOLER_LORA.match(key)
        prefix = m.group("prefix") if m else (expected if key.startswith(expected) else "")
        if prefix not in ("", expected):
            raise FingerprintMismatchError(
                f"the adapter's weights are for a {prefix[:-1]!r} model ({full}), the base is {model_type!r}; pass "
                "the --base the adapter was trained on"
            )
        if m is None:
            if key.startswith(expected + "embeddings") or "lora_embedding" in key:
                raise UnsupportedAdapterError(
                    f"{full}: adapters on the embeddings are not supported (target_modules / modules_to_save must "
                    "not include embedding layers); retrain without them"
                )
            head[key.removeprefix(expected) if key.startswith(expected + "pooler") else key] = t
            continue
        leaf = m.group("leaf")
        if leaf.startswith(("lora_embedding", "lora_magnitude")):
            raise UnsupportedAdapterError(f"{full}: {leaf} belongs to DoRA / embedding LoRA, which are not supported")
        leaf = {"lora_A.weight": "A", "lora_B.weight": "B", "ia3_l": "l"}[leaf]
        if "layer" not in m.groupdict():
            pooler[leaf] = t
            continue
        path = m.group("path")
        module = MODULE_PATHS.get(path)
        if module is None:
            raise UnsupportedAdapterError(
                f"{full}: PEFT module {path!r} is not one of the linear layers this runtime adapts "
                f"({', '.join(MODULE_PATHS)}); remove it from target_modules and retrain"
            )
        layer_deltas.setdefault((int(m.group("layer")), module), {})[leaf] = t
    return layer_deltas, pooler, head


def _lora_factors(
    cfg: dict[str, Any], name: str, parts: dict[str, Tensor], dims: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """(A^T [in, r], s * B^T [r, out]) of one module, after checking ranks and shapes."""
    if set(parts) != {"A", "B"}:
        raise ArtifactError(f"{name}: LoRA needs both lora_A and lora_B weights, found {sorted(parts)}")
    a, b = parts["A"], parts["B"]
    d_in, d_out = dims
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != d_in or b.shape[0] != d_out:
        raise FingerprintMismatchError(
            f"{name}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the base's layer "
            f"({d_in} -> {d_out}); the adapter was trained on another base: pass the --base it was trained on"
        )
    if a.shape[0] != b.shape[1]:
        raise ConfigError(
            f"{name}: inconsistent ranks, lora_A has rank {a.shape[0]} and lora_B {b.shape[1]}; "
            "the adapter file is corrupt: re-save it with save_pretrained"
        )
    r_cfg = int(_pattern_value(cfg.get("rank_pattern") or {}, name, cfg.get("r", 8)))
    if a.shape[0] != r_cfg:
        raise ConfigError(
            f"{name}: the weights have rank {a.shape[0]}, adapter_config.json says r = {r_cfg} (fields 'r' / "
            "'rank_pattern'); the config does not belong to these weights: save config and weights together"
        )
    alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, name, cfg.get("lora_alpha", 8)))
    scale = alpha / math.sqrt(r_cfg) if cfg.get("use_rslora") else alpha / r_cfg
    return a.t().float().contiguous(), (b.t().float() * scale).contiguous()


def _head(
    base: BaseModel,
    head: dict[str, Tensor],
    pooler: dict[str, Tensor],
    cfg: dict[str, Any],
    peft_type: str,
    labels: tuple[str, ...] | None,
) -> tuple[HeadConfig, dict[str, Tensor]]:
    """The task head from modules_to_save (and a LoRA'd / saved pooler), in TaskHead's state-dict names."""
    names = sorted(head)
    if {"classifier.weight", "classifier.bias"} <= set(head):  # BERT: classifier on the pooler output
        out_w, out_b = head.pop("classifier.weight"), head.pop("classifier.bias")
        pooler_w, pooler_b = head.pop("pooler.dense.weight", None), head.pop("pooler.dense.bias", None)
        hidden: tuple[Tensor, Tensor] | None = None
        if pooler_w is not None or pooler:
            if getattr(base.model, "pooler", None) is None and pooler_w is None:
                raise UnsupportedAdapterError("the adapter adapts the pooler, but the base has no pooler weights")
            w = pooler_w if pooler_w is not None else base.model.pooler.dense.weight.detach().clone()
            b = pooler_b if pooler_b is not None else base.model.pooler.dense.bias.detach().clone()
            w, b = _merge_pooler(cfg, peft_type, w.float(), b.float(), pooler)
            hidden = (w, b)
        elif not base.has_pooler:
            raise UnsupportedAdapterError(
                f"the adapter's classifier reads BERT's pooler, but {base.path} has no pooler weights (PEFT's model "
                "had a randomly initialised one, which was not saved); retrain with modules_to_save=['classifier', "
                "'pooler']"
            )
        act = "tanh"
    elif {"classifier.dense.weight", "classifier.out_proj.weight"} <= set(head):  # RoBERTa / XLM-R / ELECTRA
        hidden = (head.pop("classifier.dense.weight").float(), head.pop("classifier.dense.bias").float())
        out_w, out_b = head.pop("classifier.out_proj.weight"), head.pop("classifier.out_proj.bias")
        act = "gelu" if base.model_type == "electra" else "tanh"
    else:
        raise UnsupportedAdapterError(
            f"no classification head this runtime can run among the adapter's saved modules ({names or 'none'}); "
            "save the head with modules_to_save (task_type='SEQ_CLS' does it: 'classifier') on a "
            "*ForSequenceClassification model"
        )
    if head:
        raise UnsupportedAdapterError(
            f"modules_to_save holds weights this runtime cannot run: {sorted(head)[:5]}; only the sequence "
            "classification head (and BERT's pooler) can be saved with the adapter"
        )
    n = int(out_w.shape[0])
    problem = "regression" if n == 1 else "single_label_classification"
    if labels is not None and problem != "regression" and len(labels) != n:
        raise ConfigError(f"--labels gives {len(labels)} names, the adapter's classifier has {n} outputs")
    config = HeadConfig(
        problem_type=problem,
        num_labels=max(n, 1),
        labels=labels or (),
        pooling="pooler" if hidden is None else "cls",
        hidden_layers=0 if hidden is None else 1,
        hidden_activation=act,
    )
    weights = {"head.out.weight": out_w.float(), "head.out.bias": out_b.float()}
    if hidden is not None:
        weights["head.hidden.0.weight"], weights["head.hidden.0.bias"] = hidden
    return config, weights


def _merge_pooler(
    cfg: dict[str, Any], peft_type: str, w: Tensor, b: Tensor, parts: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """Fold a PEFT delta on ``pooler.dense`` into its weights (the pooler is part of the head: per task)."""
    if not parts:
        return w, b
    if peft_type == "LORA":
        a_t, b_t = _lora_factors(cfg, "pooler.dense", parts, (w.shape[1], w.shape[0]))
        return w + (a_t @ b_t).t(), b
    scale = parts["l"].float()
    if scale.shape[0] == 1:  # input scaling: (x * l) W^T = x (W * l)^T
        return w * scale, b
    return w * scale, b * scale[:, 0]


def import_peft(
    base: BaseModel,
    adapter_dir: str | Path,
    task_name: str | None = None,
    *,
    labels: tuple[str, ...] | None = None,
    max_length: int = 128,
    text_pair: bool = False,
) -> TaskCheckpoint:
    """Convert a PEFT adapter directory into a :class:`TaskCheckpoint` on ``base`` (nothing written)."""
    adapter_dir = Path(adapter_dir)
    cfg = _read_config(adapter_dir)
    peft_type = _check_type(cfg)
    _check_target_names(cfg)
    weights = _read_weights(adapter_dir)
    layer_deltas, pooler, head = _split(weights, base.model_type)
    if not layer_deltas:
        raise UnsupportedAdapterError(f"{adapter_dir}'s weights hold no LoRA / IA3 delta on an encoder layer")
    bad_layers = sorted({i for i, _ in layer_deltas if i >= base.num_layers})
    if bad_layers:
        raise FingerprintMismatchError(
            f"the adapter has weights for layers {bad_layers}, {base.path} has "
            f"{base.num_layers} layers; pass the --base it was trained on"
        )
    dims = module_dims(base.hidden_size, int(base.model.config.intermediate_size))
    prefix = MODEL_PREFIX[base.model_type]
    rows: dict[str, Tensor] = {}
    lora_mods: set[str] = set()
    ia3: set[str] = set()
    factors: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
    for (i, module), parts in sorted(layer_deltas.items()):
        path = next(p for p, m in MODULE_PATHS.items() if m == module)
        name = f"{prefix}encoder.layer.{i}.{path}"
        if peft_type == "LORA":
            factors[(i, module)] = _lora_factors(cfg, name, parts, dims[module])
            lora_mods.add(module)
            continue
        vec = parts.get("l")
        if vec is None or vec.dim() != 2:
            raise ArtifactError(f"{name}: IA3 needs one ia3_l weight of shape [out, 1] or [1, in]")
        side = "in" if vec.shape[0] == 1 and vec.shape[1] == dims[module][0] else "out"
        want = (1, dims[module][0]) if side == "in" else (dims[module][1], 1)
        if tuple(vec.shape) != want:
            raise FingerprintMismatchError(
                f"{name}: ia3_l has shape {tuple(vec.shape)}, the base's layer needs {want}; "
                "pass the --base it was trained on"
            )
        rows[f"{i}.{module}.ia3_{side}"] = vec.float().flatten() - 1.0
        ia3.add(f"{module}.{side}")
    rank = max((a.shape[1] for a, _ in factors.values()), default=0)
    layers = tuple(sorted({i for i, _ in layer_deltas}))
    spec = PeftSpec(
        lora=tuple(lora_mods),
        ia3=tuple(ia3),
        rank=rank,
        info={
            "peft_type": peft_type,
            "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "use_rslora": bool(cfg.get("use_rslora", False)),
            "rank_pattern": cfg.get("rank_pattern") or {},
            "alpha_pattern": cfg.get("alpha_pattern") or {},
            "target_modules": cfg.get("target_modules"),
            "feedforward_modules": cfg.get("feedforward_modules"),
            "peft_version": cfg.get("peft_version"),
            "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        },
    )
    ckpt_weights: dict[str, Tensor] = {}
    sides = {e.rsplit(".", 1)[0]: [] for e in spec.ia3}
    for e in spec.ia3:
        sides[e.rsplit(".", 1)[0]].append(e.rsplit(".", 1)[1])
    for i in layers:  # every (layer, module) of the spec, zeros where this layer has no delta: exact
        for module in sorted(set(spec.lora) | set(sides)):
            d_in, d_out = dims[module]
            if module in spec.lora:
                a_t, b_t = factors.get((i, module), (torch.zeros(d_in, 0), torch.zeros(0, d_out)))
                ckpt_weights[f"lora.{i}.{module}.lora_a"] = torch.nn.functional.pad(a_t, (0, rank - a_t.shape[1]))
                ckpt_weights[f"lora.{i}.{module}.lora_b"] = torch.nn.functional.pad(b_t, (0, 0, 0, rank - b_t.shape[0]))
            for side in sides.get(module, []):
                ckpt_weights[f"lora.{i}.{module}.ia3_{side}"] = rows.get(
                    f"{i}.{module}.ia3_{side}", torch.zeros(d_in if side == "in" else d_out)
                )
    head_config, head_weights = _head(base, head, pooler, cfg, peft_type, labels)
    ckpt_weights.update(head_weights)
    name = task_name or adapter_dir.resolve().name
    adapter = AdapterConfig(placement="none", bottleneck=1, reduction_factor=None, layers=layers, peft=spec)
    return TaskCheckpoint(
        name=name,
        base=base.spec,
        adapter=adapter,
        head=head_config,
        max_length=max_length,
        text_pair=text_pair,
        weights=ckpt_weights,
        source="peft",
        training={"imported_from": {"path": str(adapter_dir.resolve()), **spec.info}},
    )


def verify_peft(
    ckpt: TaskCheckpoint, base: BaseModel, adapter_dir: str | Path, texts: list[str] | None = None
) -> float:
    """Max abs logit difference between the imported task and PEFT's own model on sample texts (needs peft)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        hf = AutoModelForSequenceClassification.from_pretrained(
            str(base.path), num_labels=ckpt.head.out_features, attn_implementation="eager", local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    peft_model = PeftModel.from_pretrained(hf, str(adapter_dir)).eval()
    ours = ckpt.build_model(base)
    tok = base.load_tokenizer()
    texts = texts or ["a short text", "another, somewhat longer sentence to encode here", "x"]
    enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        want = peft_model(**enc).logits
        got = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    return float((want - got).abs().max())
