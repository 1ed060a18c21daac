"""The deployment directory's schema: the ONLY contract between the exporter and the runtime.

Pure Python (dataclasses + JSON + hashlib). Layout of a deployment directory::

    deployment.json                      Manifest (this module)
    tokenizer.json                       HF tokenizers file of the base
    featurizer/trunk[.int8|.fp16].onnx   embeddings + layers [0, K): no adapters
    featurizer/adapted[...].onnx         layers [K, L) reading adapter weights from bank inputs
    tasks/<name>/task.json               TaskSpec (this module)
    tasks/<name>/adapters.safetensors    this task's bank rows + head weights (see BANK KEYS below)
    tasks/<name>/head.onnx               pooled features -> logits, validated at export
    standalone/<name>/                   optional (--standalone): a Hugging Face model folder per task,
                                         config.json, tokenizer files, onnx/model.onnx, onnx/model_quantized.onnx
                                         (exporter/hf_folder.py); older deployments: standalone/<name>[.int8].onnx

Graph I/O (names are part of the contract; dynamic axes are named):
    trunk:   input_ids, attention_mask, token_type_ids  int64 [batch, sequence]
             -> hidden  float [batch, sequence, H]
    adapted: hidden float [unique, sequence, H], attention_mask int64 [unique, sequence],
             row_source int64 [rows], task_index int64 [rows], bank inputs (below)
             -> cls, mean float [rows, H] (+ pooled [rows, H] when the base has a pooler)
    head:    features float [rows, H] -> logits float [rows, out]
    standalone: input_ids, attention_mask, token_type_ids int64 [batch, sequence] -> logits [batch, out]
    The bank's T (``tasks``) and m (``bottleneck``) axes are dynamic. ``VariantSpec.io_dtypes`` gives each
    graph's float I/O dtypes: fp16 variants take float16 bank inputs, all activations stay float32.
    A head reads the adapted output named by its pooling: cls -> ``cls``, mean -> ``mean``, pooler -> ``pooled``.

BANK KEYS: per adapted layer l and site s (attn / ffn / layer): ``bank.{l}.{s}.down_w [T, H, m]``,
``.down_b [T, m]``, ``.up_w [T, m, H]``, ``.up_b [T, H]`` and, when the signature has them,
``.ln_before_w/_b``, ``.ln_after_w/_b`` ``[T, H]``; per-task LayerNorms ``bank.{l}.{attn|ffn}_ln.w/.b [T, H]``.
A task's ``adapters.safetensors`` holds its row (no T axis, its own m) under the same names, plus its head
as ``head.hidden.{i}.w [H, H]``, ``head.hidden.{i}.b``, ``head.out.w [H, out]``, ``head.out.b``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapterdeploy import __version__
from adapterdeploy.config import AdapterSignature, HeadConfig
from adapterdeploy.errors import ArtifactError, ChecksumError, SchemaVersionError

__all__ = [
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "TASK_FILE",
    "FeaturizerSpec",
    "FileEntry",
    "Manifest",
    "TaskSpec",
    "TokenizerSpec",
    "VariantSpec",
    "atomic_directory",
    "featurizer_fingerprint",
    "file_entry",
    "safe_relpath",
    "sha256_file",
    "verify_files",
]

SCHEMA_VERSION = 1
MANIFEST_FILE = "deployment.json"
TASK_FILE = "task.json"
TASK_WEIGHTS_FILE = "adapters.safetensors"
TASK_HEAD_FILE = "head.onnx"
PRECISIONS = ("fp32", "int8", "fp16")
# Optional key of TaskSpec.parity read by `adapterdeploy check`: a few inputs with the PyTorch fp32 reference
# logits of this task, [{"input": "text" | ["text_a", "text_b"], "logits": [float, ...]}, ...]; check runs the
# runtime on them and compares (tokenized with truncation at the deployment's max_length).
PARITY_SAMPLES = "samples"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


def file_entry(path: str | Path) -> FileEntry:
    p = Path(path)
    return FileEntry(size=p.stat().st_size, sha256=sha256_file(p))


def safe_relpath(rel: str) -> str:
    """Refuse manifest paths that leave the deployment directory (absolute, ``..``, backslashes)."""
    # String checks, not PurePosixPath: a manifest of 10,000 tasks calls this tens of thousands of times.
    if not rel or rel.startswith(("/", "~")) or ".." in rel.split("/") or "\\" in rel:
        raise ArtifactError(f"path {rel!r} in the manifest leaves the deployment directory; refusing to read it")
    return rel


def verify_files(root: str | Path, files: dict[str, FileEntry], *, only: list[str] | None = None) -> list[str]:
    """Check size then sha256 of each listed file; return one message per problem (empty = all good)."""
    root = Path(root)
    problems = []
    for rel in only if only is not None else sorted(files):
        entry = files[rel]
        path = root / safe_relpath(rel)
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{rel}: size {size} bytes, manifest says {entry.size} (truncated or replaced)")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{rel}: sha256 differs from the manifest (corrupt or modified)")
    return problems


def require_files(root: str | Path, files: dict[str, FileEntry], only: list[str] | None = None) -> None:
    problems = verify_files(root, files, only=only)
    if problems:
        raise ChecksumError(
            f"deployment {root} failed its checksum verification: " + "; ".join(problems)
            + ". Re-export it (export-adapters ... --force) or restore the files."
        )


def featurizer_fingerprint(
    base_fingerprint: str, adapter_drop: int, signature: AdapterSignature, num_layers: int
) -> str:
    """Identity of a featurizer: base weights, AdapterDrop K, adapter signature and depth.

    Tasks exported against one featurizer can be loaded by any deployment with the same fingerprint.
    """
    payload = json.dumps(
        {"base": base_fingerprint, "k": adapter_drop, "signature": signature.to_dict(), "layers": num_layers},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class VariantSpec:
    """One precision of the featurizer graphs."""

    precision: str
    trunk: str
    adapted: str
    optimization: str = "none"
    op_counts: dict[str, int] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    # Added by the exporter: how the variant was chosen (candidate timings in ms, batch shape, chosen one).
    timings: dict[str, Any] = field(default_factory=dict)
    # {"trunk" | "adapted": {graph input/output name: "float32" | "float16" | "int64"}}; fp16 variants take
    # fp16 bank inputs (the runtime casts task rows once) while hidden / cls / mean / pooled stay float32.
    io_dtypes: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class FeaturizerSpec:
    fingerprint: str
    adapter_drop: int
    num_layers: int
    hidden_size: int
    signature: AdapterSignature
    adapted_layers: tuple[int, ...]
    bank_inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    variants: dict[str, VariantSpec]
    opset: int = 17

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["signature"] = self.signature.to_dict()
        d["adapted_layers"] = list(self.adapted_layers)
        d["bank_inputs"] = list(self.bank_inputs)
        d["outputs"] = list(self.outputs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturizerSpec:
        return cls(
            fingerprint=d["fingerprint"],
            adapter_drop=int(d["adapter_drop"]),
            num_layers=int(d["num_layers"]),
            hidden_size=int(d["hidden_size"]),
            signature=AdapterSignature.from_dict(d["signature"]),
            adapted_layers=tuple(d["adapted_layers"]),
            bank_inputs=tuple(d["bank_inputs"]),
            outputs=tuple(d["outputs"]),
            variants={k: VariantSpec(**v) for k, v in d["variants"].items()},
            opset=int(d.get("opset", 17)),
        )


@dataclass(frozen=True)
class TokenizerSpec:
    file: str = "tokenizer.json"
    max_length: int = 128
    model_type: str = "bert"


@dataclass(frozen=True)
class TaskSpec:
    """``tasks/<name>/task.json``: everything the runtime needs to load and run one task."""

    name: str
    featurizer_fingerprint: str
    head: HeadConfig
    bottleneck: int
    layers: tuple[int, ...]
    text_pair: bool
    files: dict[str, FileEntry]
    parity: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "featurizer_fingerprint": self.featurizer_fingerprint,
            "head": self.head.to_dict(),
            "bottleneck": self.bottleneck,
            "layers": list(self.layers),
            "text_pair": self.text_pair,
            "files": {k: asdict(v) for k, v in self.files.items()},
            "parity": self.parity,
            "metrics": self.metrics,
            "adapter": self.adapter,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        _check_schema(d.get("schema_version"), "task.json")
        return cls(
            name=d["name"],
            featurizer_fingerprint=d["featurizer_fingerprint"],
            head=HeadConfig.from_dict(d["head"]),
            bottleneck=int(d["bottleneck"]),
            layers=tuple(d["layers"]),
            text_pair=bool(d["text_pair"]),
            files={k: FileEntry(**v) for k, v in d["files"].items()},
            parity=dict(d.get("parity", {})),
            metrics=dict(d.get("metrics", {})),
            adapter=dict(d.get("adapter", {})),
            schema_version=int(d["schema_version"]),
        )

    @classmethod
    def read(cls, task_dir: str | Path) -> TaskSpec:
        return cls.from_dict(_read_json(Path(task_dir) / TASK_FILE))

    def write(self, task_dir: str | Path) -> None:
        (Path(task_dir) / TASK_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass(frozen=True)
class Manifest:
    """``deployment.json``."""

    base: dict[str, Any]
    featurizer: FeaturizerSpec
    tokenizer: TokenizerSpec
    tasks: dict[str, str]  # task name -> task dir relative to the deployment root
    files: dict[str, FileEntry]
    parity: dict[str, Any] = field(default_factory=dict)
    adapter_drop_eval: dict[str, Any] = field(default_factory=dict)
    # Added by the exporter (--standalone): task name -> {precision: path of its self-contained graph}, e.g.
    # {"fp32": "standalone/sst2/onnx/model.onnx", "int8": "standalone/sst2/onnx/model_quantized.onnx"}.
    standalone: dict[str, dict[str, str]] = field(default_factory=dict)
    tool_version: str = __version__
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.featurizer.variants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool_version": self.tool_version,
            "created": self.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base": self.base,
            "featurizer": self.featurizer.to_dict(),
            "tokenizer": asdict(self.tokenizer),
            "tasks": dict(sorted(self.tasks.items())),
            "files": {k: asdict(v) for k, v in sorted(self.files.items())},
            "parity": self.parity,
            "adapter_drop_eval": self.adapter_drop_eval,
            "standalone": self.standalone,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        _check_schema(d.get("schema_version"), MANIFEST_FILE)
        try:
            return cls(
                base=dict(d["base"]),
                featurizer=FeaturizerSpec.from_dict(d["featurizer"]),
                tokenizer=TokenizerSpec(**d["tokenizer"]),
                tasks={k: safe_relpath(v) for k, v in d["tasks"].items()},
                files={safe_relpath(k): FileEntry(**v) for k, v in d["files"].items()},
                parity=dict(d.get("parity", {})),
                adapter_drop_eval=dict(d.get("adapter_drop_eval", {})),
                standalone={k: {p: safe_relpath(f) for p, f in v.items()} for k, v in d.get("standalone", {}).items()},
                tool_version=str(d.get("tool_version", "")),
                created=str(d.get("created", "")),
                schema_version=int(d["schema_version"]),
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{MANIFEST_FILE} is missing or has a malformed field: {exc}") from exc

    @classmethod
    def read(cls, root: str | Path) -> Manifest:
        root = Path(root)
        if not root.is_dir():
            raise ArtifactError(f"deployment directory {root} does not exist; create one with 'export-adapters'")
        return cls.from_dict(_read_json(root / MANIFEST_FILE))

    def write(self, root: str | Path) -> None:
        (Path(root) / MANIFEST_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _check_schema(version: Any, what: str) -> None:
    if not isinstance(version, int):
        raise ArtifactError(f"{what} has no valid schema_version; it was not written by adapterdeploy")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{what} has schema_version {version}, this adapterdeploy {__version__} reads up to {SCHEMA_VERSION}; "
            "upgrade adapterdeploy"
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; is {path.parent} an adapterdeploy deployment?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the file is corrupt or truncated") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} does not hold a JSON object")
    return data


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; on success it replaces ``target`` by rename, on error it is removed.

    A crash at any point leaves ``target`` either as it was or absent (during the swap's two renames),
    never half-written; leftovers are hidden ``.{name}.tmp-*`` / ``.{name}.old-*`` siblings.
    """
    target = Path(target).absolute()
    if target.exists() and not force:
        raise ArtifactError(f"{target} already exists; pass --force to replace it")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        # mkdtemp makes the dir 0700; the finished artifact should get the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
    except OSError as exc:
        raise ArtifactError(f"cannot write to {parent}: {exc.strerror}; choose a writable --out directory") from exc
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = parent / f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
