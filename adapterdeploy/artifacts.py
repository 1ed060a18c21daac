"""The deployment directory's schema: the ONLY contract between the exporter and the runtime.

Pure Python (dataclasses + JSON + hashlib). Layout of a deployment directory::

    deployment.json                      Manifest (this module)
    tokenizer.json                       HF tokenizers file of the base
    featurizer/trunk[.int8|.fp16].onnx   embeddings + layers [0, K): no adapters
    featurizer/adapted[...].onnx         layers [K, L) reading adapter weights from bank inputs
    tasks/<name>/task.json               TaskSpec (this module): the task's own files and their checksums
    tasks/<name>/adapters.safetensors    this task's bank rows + head weights (see BANK KEYS below)
    tasks/<name>/head.onnx               pooled features -> logits, validated at export
    standalone/<name>/                   optional (--standalone): a Hugging Face model folder per task,
                                         config.json, tokenizer files, onnx/model.onnx, onnx/model_quantized.onnx
                                         (exporter/hf_folder.py); older deployments: standalone/<name>[.int8].onnx

Checksums (schema 2): ``deployment.json`` lists the deployment-level files (tokenizer, featurizer graphs,
standalone graphs) in ``files`` and, per task, only its directory (``tasks``) and the size + sha256 of its
``task.json`` (``task_files``); each ``task.json`` lists its own files. So adding or removing a task hashes
only what it writes and rewrites one small entry of the manifest, whatever the number of tasks. A task
directory is ``tasks/<name>``, or ``tasks/<name>~<id>`` when it replaced a task of the same name (the old
directory stays valid until the manifest naming the new one is in place). Schema 1 manifests (every task
file listed in ``files``) are read and converted on the fly.

Graph I/O (names are part of the contract; dynamic axes are named):
    trunk:   input_ids, attention_mask, token_type_ids  int64 [batch, sequence]
             -> hidden  float [batch, sequence, H]
    adapted: hidden float [unique, sequence, H], attention_mask int64 [unique, sequence],
             row_source int64 [rows], task_index int64 [rows], bank inputs (below)
             -> cls, mean float [rows, H] (+ pooled [rows, H] when the base has a pooler)
    head:    features float [rows, H] -> logits float [rows, out]
    standalone: input_ids, attention_mask, token_type_ids int64 [batch, sequence] -> logits [batch, out]
    The bank's T (``tasks``) and m (``bottleneck``) axes are dynamic. ``VariantSpec.io_dtypes`` gives each
    graph's float I/O dtypes: fp16 variants take float16 bank inputs, all activations stay float32. int8
    variants exported since issue 15 (optimization ``...+int8-bank``) take ``down_w`` / ``up_w`` as int8 plus
    ``<key>_scale`` float32 ``[T, 1, N]`` inputs (per-column scales; the runtime quantizes task rows at load,
    runtime/bank.py); older int8 variants take float32 bank inputs and still load.
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
import re
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
from adapterdeploy.validation import MAX_BOTTLENECK, MAX_HIDDEN, MAX_LAYERS, Fields, check_task_name

__all__ = [
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "STAGING_PREFIX",
    "TASK_FILE",
    "BaseSpec",
    "FeaturizerSpec",
    "FileEntry",
    "Manifest",
    "TaskSpec",
    "TokenizerSpec",
    "VariantSpec",
    "atomic_directory",
    "current_umask",
    "featurizer_fingerprint",
    "file_entry",
    "fsync_tree",
    "make_readable",
    "safe_relpath",
    "sha256_file",
    "verify_deployment",
    "verify_files",
    "write_json_atomic",
]

SCHEMA_VERSION = 2
MANIFEST_FILE = "deployment.json"
TASK_FILE = "task.json"
TASK_WEIGHTS_FILE = "adapters.safetensors"
TASK_HEAD_FILE = "head.onnx"
# add-task stages new pieces in <deployment>/.staging-<id>/ (same filesystem, so they move in by rename).
STAGING_PREFIX = ".staging-"
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


def _file_entry(f: Fields) -> FileEntry:
    sha = f.text("sha256")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        f.fail("sha256", "is not 64 lowercase hex digits")
    return FileEntry(size=f.integer("size", lo=0), sha256=sha)


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


def verify_deployment(root: str | Path, manifest: Manifest) -> tuple[list[str], int]:
    """Every checksum of a deployment: its own files, each task.json (from the manifest), each task's files
    (from its task.json). Returns (one message per problem, number of files checked)."""
    root = Path(root)
    problems = verify_files(root, manifest.files)
    checked = len(manifest.files)
    for name, rel in sorted(manifest.tasks.items()):
        entry = manifest.task_files.get(name)
        if entry is None:
            problems.append(f"{rel}/{TASK_FILE}: no checksum in {MANIFEST_FILE}")
            continue
        task_json = verify_files(root / safe_relpath(rel), {TASK_FILE: entry})
        checked += 1
        if task_json:
            problems += [f"{rel}/{p}" for p in task_json]
            continue
        try:
            spec = TaskSpec.read(root / rel)
        except ArtifactError as exc:
            problems.append(f"{rel}: {exc}")
            continue
        problems += [f"{rel}/{p}" for p in verify_files(root / rel, spec.files)]
        checked += len(spec.files)
    return problems, checked


def require_files(root: str | Path, files: dict[str, FileEntry], only: list[str] | None = None) -> None:
    problems = verify_files(root, files, only=only)
    if problems:
        raise ChecksumError(
            f"deployment {root} failed its checksum verification: "
            + "; ".join(problems)
            + ". Re-export it (export-adapters ... --force) or restore the files."
        )


def current_umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(root: str | Path) -> None:
    """Give every file under ``root`` (and ``root`` itself) the mode a new file gets under the umask.

    Why: safetensors' ``save_file`` and ``tempfile.mkdtemp`` create 0600 / 0700 whatever the umask, so a
    deployment exported by one user was unreadable by the server's user (e.g. the image's uid 10001).
    Files get ``0o666 & ~umask``, directories ``0o777 & ~umask``, as ``open()`` / ``mkdir`` would give them.
    """
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    root = Path(root)
    if root.is_file():
        root.chmod(file_mode)
        return
    root.chmod(dir_mode)
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), dir_mode)
        for f in files:
            os.chmod(os.path.join(dirpath, f), file_mode)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON to a hidden temp file beside ``path``, fsync, and rename it over ``path`` (umask mode)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# Per architecture: (pad token id, token type vocabulary size) of transformers' config classes. An older
# manifest has only the config's diff from these defaults, so a value absent there is the default.
_BASE_DEFAULTS = {"roberta": (1, 2), "xlm-roberta": (1, 2)}


@dataclass(frozen=True)
class BaseSpec:
    """What the rest of the tool needs to know about a base encoder, built once from the loaded model.

    Held by manifests (``deployment.json``'s ``base``) and task checkpoints (their ``task.json``'s ``base``).
    ``config`` is the base's ``config.json`` as a diff from its architecture's defaults: the config.json
    of standalone folders is rebuilt from it (``export-standalone`` has no base directory). Files written
    before this record existed lack some fields: :meth:`from_dict` fills them from ``config`` or from the
    architecture's defaults (``_BASE_DEFAULTS``); those it cannot know are None.
    """

    model_type: str
    fingerprint: str
    hidden_size: int
    num_layers: int
    num_heads: int | None = None
    max_position_embeddings: int | None = None
    layer_norm_eps: float = 1e-12
    vocab_size: int | None = None
    type_vocab_size: int = 2
    pad_token_id: int = 0
    has_pooler: bool = False
    path: str = ""
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path = MANIFEST_FILE, *, fix: str = "") -> BaseSpec:
        """Validate every field (types and sane ranges) before anything is sized from it."""
        f = Fields(d, where, fix=fix or "re-export the deployment (export-adapters ... --force)", prefix="base.")
        model_type = f.text("model_type")
        config = f.mapping("config", {})
        pad_default, types_default = _BASE_DEFAULTS.get(model_type, (0, 2))

        def known(key: str, config_key: str, default: Any) -> Any:  # the field, else config.json's, else default
            return d[key] if d.get(key) is not None else config.get(config_key, default)

        probe = Fields(
            {
                "num_heads": known("num_heads", "num_attention_heads", None),
                "max_position_embeddings": known("max_position_embeddings", "max_position_embeddings", None),
                "layer_norm_eps": known("layer_norm_eps", "layer_norm_eps", 1e-12),
                "vocab_size": known("vocab_size", "vocab_size", None),
                "type_vocab_size": known("type_vocab_size", "type_vocab_size", types_default),
                "pad_token_id": known("pad_token_id", "pad_token_id", pad_default),
            },
            where,
            fix=f.fix,
            prefix="base.",
        )
        eps = probe.raw("layer_norm_eps")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            probe.fail("layer_norm_eps", f"is {eps!r:.40}, not a small positive number")
        optional = {
            key: probe.integer(key, None, lo=1, hi=hi) if probe.has(key) else None
            for key, hi in (("num_heads", 1024), ("max_position_embeddings", 1 << 20), ("vocab_size", 1 << 24))
        }
        return cls(
            model_type=model_type,
            fingerprint=f.text("fingerprint"),
            hidden_size=f.integer("hidden_size", lo=1, hi=MAX_HIDDEN),
            num_layers=f.integer("num_layers", lo=1, hi=MAX_LAYERS),
            num_heads=optional["num_heads"],
            max_position_embeddings=optional["max_position_embeddings"],
            layer_norm_eps=float(eps),
            vocab_size=optional["vocab_size"],
            type_vocab_size=probe.integer("type_vocab_size", lo=1, hi=1 << 16),
            pad_token_id=probe.integer("pad_token_id", lo=0, hi=1 << 24),
            has_pooler=f.flag("has_pooler", False),
            path=f.text("path", ""),
            config=config,
        )


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
    # {"trunk" | "adapted": {graph input/output name: "float32" | "float16" | "int64" | "int8"}}; fp16 variants
    # take fp16 bank inputs (the runtime casts task rows once) while hidden / cls / mean / pooled stay float32;
    # int8 variants with "+int8-bank" take int8 adapter projections plus their "<key>_scale" inputs.
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
    def from_dict(cls, d: dict[str, Any], where: str | Path = TASK_FILE) -> TaskSpec:
        """Validate every field (types, safe name and file names, sane sizes, labels) before trusting it."""
        _check_schema(d.get("schema_version") if isinstance(d, dict) else None, str(where))
        f = Fields(d, where, fix="re-export the task (adapterdeploy add-task DEPLOYMENT CHECKPOINT --replace)")
        name = f.text("name")
        check_task_name(name, f"{where}: field 'name'", ArtifactError)
        files = {}
        for rel in f.mapping("files"):
            if not isinstance(rel, str) or "/" in rel or "\\" in rel or rel in ("", ".", ".."):
                f.fail("files", f"names {rel!r}, not a plain file name inside the task directory")
            files[rel] = _file_entry(f.obj("files").obj(rel))
        return cls(
            name=name,
            featurizer_fingerprint=f.text("featurizer_fingerprint"),
            head=f.build("head", HeadConfig.from_dict),
            bottleneck=f.integer("bottleneck", lo=1, hi=MAX_BOTTLENECK),
            layers=f.integers("layers", hi=MAX_LAYERS - 1),
            text_pair=f.flag("text_pair"),
            files=files,
            parity=f.mapping("parity", {}),
            metrics=f.mapping("metrics", {}),
            adapter=f.mapping("adapter", {}),
            schema_version=f.integer("schema_version"),
        )

    @classmethod
    def read(cls, task_dir: str | Path) -> TaskSpec:
        path = Path(task_dir) / TASK_FILE
        return cls.from_dict(_read_json(path), path)

    def write(self, task_dir: str | Path) -> None:
        write_json_atomic(Path(task_dir) / TASK_FILE, self.to_dict())


@dataclass(frozen=True)
class Manifest:
    """``deployment.json``."""

    base: BaseSpec
    featurizer: FeaturizerSpec
    tokenizer: TokenizerSpec
    tasks: dict[str, str]  # task name -> task dir relative to the deployment root
    files: dict[str, FileEntry]  # deployment-level files only (tokenizer, featurizer, standalone graphs)
    # task name -> size and sha256 of its task.json (which lists the task's own files and their checksums)
    task_files: dict[str, FileEntry] = field(default_factory=dict)
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
            "base": self.base.to_dict(),
            "featurizer": self.featurizer.to_dict(),
            "tokenizer": asdict(self.tokenizer),
            "tasks": dict(sorted(self.tasks.items())),
            "task_files": {k: asdict(v) for k, v in sorted(self.task_files.items())},
            "files": {k: asdict(v) for k, v in sorted(self.files.items())},
            "parity": self.parity,
            "adapter_drop_eval": self.adapter_drop_eval,
            "standalone": self.standalone,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path = MANIFEST_FILE) -> Manifest:
        """Validate every field (types, safe task names and paths, sane sizes) before trusting it."""
        _check_schema(d.get("schema_version") if isinstance(d, dict) else None, str(where))
        f = Fields(d, where, fix="re-export the deployment (export-adapters ... --force)")
        tasks = {}
        for name, rel in f.mapping("tasks").items():
            check_task_name(name, f"{where}: field 'tasks'", ArtifactError)
            if not isinstance(rel, str):
                f.fail(f"tasks.{name}", f"must be a directory path, got {rel!r:.60}")
            tasks[name] = _safe(f, f"tasks.{name}", rel)
        files = {_safe(f, "files", rel): _file_entry(f.obj("files").obj(rel)) for rel in f.mapping("files")}
        task_files = {name: _file_entry(f.obj("task_files").obj(name)) for name in f.mapping("task_files", {})}
        if f.integer("schema_version") < 2:
            files, task_files = _split_v1_files(tasks, files)
        featurizer = f.build("featurizer", FeaturizerSpec.from_dict)
        if not 1 <= featurizer.hidden_size <= MAX_HIDDEN or not 0 <= featurizer.adapter_drop <= featurizer.num_layers:
            f.fail(
                "featurizer",
                f"has hidden_size {featurizer.hidden_size} / adapter_drop {featurizer.adapter_drop} "
                f"for {featurizer.num_layers} layers, out of range",
            )
        standalone = {}
        for name, by_precision in f.mapping("standalone", {}).items():
            if not isinstance(by_precision, dict):
                f.fail(f"standalone.{name}", "must be a JSON object of precision -> path")
            standalone[name] = {p: _safe(f, f"standalone.{name}", rel) for p, rel in by_precision.items()}
        tokenizer = f.build("tokenizer", lambda t: TokenizerSpec(**t))
        if not isinstance(tokenizer.max_length, int) or not 2 <= tokenizer.max_length <= 1 << 20:
            f.fail("tokenizer.max_length", f"is {tokenizer.max_length!r}, not a usable length")
        return cls(
            base=BaseSpec.from_dict(f.mapping("base"), where),
            featurizer=featurizer,
            tokenizer=tokenizer,
            tasks=tasks,
            files=files,
            task_files=task_files,
            parity=f.mapping("parity", {}),
            adapter_drop_eval=f.mapping("adapter_drop_eval", {}),
            standalone=standalone,
            tool_version=str(d.get("tool_version", "")),
            created=str(d.get("created", "")),
            schema_version=SCHEMA_VERSION,
        )

    @classmethod
    def read(cls, root: str | Path) -> Manifest:
        root = Path(root)
        if not root.is_dir():
            raise ArtifactError(f"deployment directory {root} does not exist; create one with 'export-adapters'")
        return cls.from_dict(_read_json(root / MANIFEST_FILE), root / MANIFEST_FILE)

    def write(self, root: str | Path) -> None:
        """Replace ``deployment.json`` atomically (temp file + fsync + rename)."""
        write_json_atomic(Path(root) / MANIFEST_FILE, self.to_dict())

    def task_dir(self, root: str | Path, name: str) -> Path:
        return Path(root) / safe_relpath(self.tasks[name])


def _safe(f: Fields, key: str, rel: Any) -> str:
    """A path inside the deployment, or the field's error (absolute, ``..``, backslash, not a string)."""
    if not isinstance(rel, str):
        f.fail(key, f"holds {rel!r:.60}, not a path")
    try:
        return safe_relpath(rel)
    except ArtifactError as exc:
        f.fail(key, str(exc))
        raise


def _split_v1_files(
    tasks: dict[str, str], files: dict[str, FileEntry]
) -> tuple[dict[str, FileEntry], dict[str, FileEntry]]:
    """Schema 1 listed every task file in ``files``: keep the deployment-level ones, and each task.json's entry."""
    prefixes = tuple(rel.rstrip("/") + "/" for rel in tasks.values())
    kept = {k: v for k, v in files.items() if not k.startswith(prefixes)}
    task_files = {
        name: files[f"{rel.rstrip('/')}/{TASK_FILE}"]
        for name, rel in tasks.items()
        if f"{rel.rstrip('/')}/{TASK_FILE}" in files
    }
    return kept, task_files


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
        tmp.chmod(0o777 & ~current_umask())
    except OSError as exc:
        raise ArtifactError(f"cannot write to {parent}: {exc.strerror}; choose a writable --out directory") from exc
    try:
        yield tmp
        make_readable(tmp)  # safetensors / tempfile wrote some files 0600: readable by the serving user too
        fsync_tree(tmp)
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


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` (before a rename makes them visible)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
