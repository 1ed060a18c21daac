"""End-to-end runtime tests on deployments exported from tiny bases (tests/conftest.py) by the real exporter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from adapterdeploy.errors import (
    ArtifactError,
    ChecksumError,
    ConfigError,
    FingerprintMismatchError,
    InputError,
    ProviderError,
    RegistryFullError,
    SchemaVersionError,
    TaskFailedError,
    UnknownTaskError,
)
from adapterdeploy.runtime import Deployment, Prediction, TaskInfo

TOL = 1e-5
TEXTS = [
    "the movie was good",
    "a very bad film and a boring plot",
    "yes",
    "the movie was good",
    " ".join(["it was fun and the story was good"] * 10),
]  # a duplicate and an over-long row
PAIRS = [
    ("the company said its shares were up", "shares of the company rose"),
    ("it is great", "it is terrible"),
    ("a man", "a woman said yes"),
]
TASKS = {
    # name: (adapter config kwargs, head config kwargs, text_pair)
    "sent": ({"bottleneck": 8}, {"num_labels": 2, "labels": ("neg", "pos")}, False),
    "topic": (
        {"bottleneck": 4},
        {
            "num_labels": 3,
            "labels": ("a", "b", "c"),
            "pooling": "mean",
            "hidden_layers": 1,
            "hidden_activation": "gelu",
        },
        False,
    ),
    "para": ({"bottleneck": 6}, {"num_labels": 2, "pooling": "pooler"}, True),
    "score": ({"bottleneck": 8}, {"problem_type": "regression"}, True),
}
MAX_LENGTH = 24


def _export(base_dir: Path, out: Path, tasks: dict, adapter_drop: int = 1, init_std: float = 0.3):
    """Checkpoints with random (non-trivial) weights on layers >= adapter_drop, exported; returns dir + models."""
    import torch

    from adapterdeploy.config import AdapterConfig, HeadConfig
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.models.encoder import EncoderWithAdapters

    base = load_base(base_dir)
    layers = tuple(range(adapter_drop, base.num_layers))
    torch.manual_seed(0)
    models, dirs = {}, []
    for name, (ac, hc, pair) in tasks.items():
        model = EncoderWithAdapters(base, AdapterConfig(layers=layers, **ac), HeadConfig(**hc))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0.0, init_std)
        model.eval()
        models[name] = model
        ckpt = checkpoint_from_model(model, name, max_length=MAX_LENGTH, text_pair=pair)
        dirs.append(save_checkpoint(ckpt, out / "ckpt" / name))
    export_deployment(base_dir, dirs, out / "deploy", adapter_drop=adapter_drop, max_length=MAX_LENGTH)
    return out / "deploy", base, models


@pytest.fixture(scope="module")
def exported(tiny_base_dir, tmp_path_factory):
    return _export(tiny_base_dir, tmp_path_factory.mktemp("rt-bert"), TASKS)


@pytest.fixture(scope="module")
def deploy_dir(exported) -> Path:
    return exported[0]


@pytest.fixture(scope="module")
def dep(deploy_dir):
    with Deployment.open(deploy_dir) as d:
        yield d


def _vec(p: Prediction) -> np.ndarray:
    return np.array([p.value] if p.probabilities is None else list(p.probabilities.values()))


def _inputs(task: str):
    return PAIRS if TASKS[task][2] else TEXTS


def _torch_outputs(base, model, rows, problem_type):
    import torch

    tok = base.load_tokenizer()
    a = [r if isinstance(r, str) else r[0] for r in rows]
    b = None if isinstance(rows[0], str) else [r[1] for r in rows]
    enc = tok(a, b, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        logits = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    return logits.numpy() if problem_type == "regression" else torch.softmax(logits, -1).numpy()


# ---- correctness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_predict_matches_pytorch(exported, dep, task):
    _, base, models = exported
    rows = _inputs(task)
    got = np.stack([_vec(p) for p in dep.predict(rows, task=task)])
    want = _torch_outputs(base, models[task], rows, TASKS[task][1].get("problem_type", ""))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_mixed_and_fan_out_equal_single_task(dep):
    single = {t: dep.predict(_inputs(t), task=t) for t in TASKS}
    rows = [(t, x) for i in range(5) for t in TASKS for x in _inputs(t)[i : i + 1]]
    mixed = dep.predict_mixed(rows)
    assert [p.task for p in mixed] == [t for t, _ in rows]
    for (t, x), p in zip(rows, mixed, strict=True):
        ref = single[t][_inputs(t).index(x)]
        np.testing.assert_allclose(_vec(p), _vec(ref), rtol=0, atol=TOL)
        assert p.label == ref.label and p.truncated == ref.truncated
    fan = dep.fan_out(TEXTS, tasks=["sent", "topic"])
    assert list(fan) == ["sent", "topic"]
    for t in ("sent", "topic"):
        np.testing.assert_allclose(
            np.stack([_vec(p) for p in fan[t]]), np.stack([_vec(p) for p in single[t]]), rtol=0, atol=TOL
        )


def test_repeated_fan_outs_reuse_the_gathered_bank_but_never_stale_rows(deploy_dir, tmp_path, monkeypatch):
    """The engine keeps recent multi-task gathers: the same tasks again reuse them; a task loaded again from a
    changed file (new rows objects) is gathered afresh; the cache stays within its byte bound."""
    from adapterdeploy.runtime import engine as engine_mod

    changed = tmp_path / "sent"
    shutil.copytree(deploy_dir / "tasks" / "sent", changed)
    with Deployment.open(deploy_dir) as d:
        calls = []
        gather = d._engine.layout.gather
        monkeypatch.setattr(d._engine.layout, "gather", lambda rows: calls.append(len(rows)) or gather(rows))
        first = d.fan_out(TEXTS[:1], tasks=["sent", "topic"])
        again = d.fan_out(TEXTS[:1], tasks=["sent", "topic"])
        assert calls == [2] and _vec(first["sent"][0]).tolist() == _vec(again["sent"][0]).tolist()
        d.unload_task("sent")
        d.load_task(changed)  # the same name, new rows objects: the cached gather must not be used
        d.fan_out(TEXTS[:1], tasks=["sent", "topic"])
        assert calls == [2, 2]
        monkeypatch.setattr(engine_mod, "GATHER_CACHE_BYTES", 1)  # nothing fits: every call gathers
        d._engine._gathered.clear()
        d._engine._gathered_bytes = 0
        d.fan_out(TEXTS[:1], tasks=["sent", "topic"])
        d.fan_out(TEXTS[:1], tasks=["sent", "topic"])
        assert calls == [2, 2, 2, 2] and not d._engine._gathered


def test_bucketing_and_bank_modes_give_the_same_results(deploy_dir, dep):
    rows = [("sent" if i % 3 else "topic", f"the movie was good {'very ' * (i % 7)}fun {i}") for i in range(23)]
    ref = dep.predict_mixed(rows)
    from adapterdeploy.runtime.options import RuntimeOptions

    # The options object, with one option changed by keyword on top of it (both ways in are one path).
    with Deployment.open(deploy_dir, RuntimeOptions(bank_mode="resident", threads=1), batch_size=4) as small:
        got = small.predict_mixed(rows)
        assert small.bank_mode == "resident" and small.batch_size == 4
        small.unload_task("sent")  # the resident bank is rebuilt for the new loaded set
        again = small.predict_mixed(rows)
    for a, b, c in zip(ref, got, again, strict=True):
        np.testing.assert_allclose(_vec(a), _vec(b), rtol=0, atol=TOL)
        np.testing.assert_allclose(_vec(a), _vec(c), rtol=0, atol=TOL)


def test_prediction_fields_and_truncation(dep):
    preds = dep.predict(TEXTS, task="topic")
    p = preds[0]
    assert isinstance(p, Prediction) and p.task == "topic" and p.value is None
    assert list(p.probabilities) == ["a", "b", "c"] and p.label in ("a", "b", "c")
    assert p.score == max(p.probabilities.values())
    assert [q.truncated for q in preds] == [False, False, False, False, True]
    reg = dep.predict(PAIRS[:1], task="score")[0]
    assert reg.probabilities is None and reg.label is None and reg.value == reg.score
    assert json.loads(json.dumps(reg.to_dict()))["value"] == reg.value
    counts = dep.token_counts(TEXTS)
    assert counts[4] > dep.max_length >= counts[0]
    with pytest.raises(InputError, match=rf"inputs\[4\] has {counts[4]} tokens.*max_length is {MAX_LENGTH}"):
        dep.predict(TEXTS, task="sent", strict=True)
    with pytest.raises(InputError, match=r"rows\[1\] has"):
        dep.predict_mixed([("sent", "yes"), ("sent", TEXTS[4])], strict=True)
    assert dep.predict([], task="sent") == []


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda d: d.predict(["x"], task="nope"),
            UnknownTaskError,
            "unknown task 'nope'; known tasks: para, score, sent, topic",
        ),
        (lambda d: d.predict([""], task="sent"), InputError, "empty text"),
        (lambda d: d.predict([b"bytes"], task="sent"), InputError, "is a bytes"),
        (lambda d: d.predict("just a str", task="sent"), InputError, "single str"),
        (lambda d: d.predict([("a", "b")], task="sent"), InputError, "task 'sent' takes single texts; inputs"),
        (lambda d: d.predict(["a"], task="para"), InputError, "task 'para' takes text pairs"),
        (lambda d: d.predict([("a", "b"), "c"], task="para"), InputError, r"inputs\[1\] is a single text"),
        (lambda d: d.predict_mixed([("sent",)]), InputError, r"rows\[0\] must be \(task, text\)"),
        (lambda d: d.predict_mixed([(3, "x")]), InputError, r"rows\[0\] must be"),
        (lambda d: d.predict_mixed([("sent", None)]), InputError, r"rows\[0\] is a NoneType"),
        (lambda d: d.fan_out(["x"], tasks="sent"), InputError, "list of task names"),
        (lambda d: d.fan_out(["x"], tasks=["sent", "para"]), InputError, "task 'para' takes text pairs"),
        (lambda d: d.load_task("/no/such/dir"), UnknownTaskError, "known tasks: para, score, sent, topic"),
    ],
)
def test_bad_inputs(dep, call, error, match):
    with pytest.raises(error, match=match):
        call(dep)


# ---- task registry through the deployment ----------------------------------------------------------------


def _states(d: Deployment) -> dict[str, str]:
    return {i.name: i.state for i in d.tasks()}


def test_registry_states_budget_and_pins(deploy_dir):
    evicted = []
    with Deployment.open(deploy_dir, max_loaded_tasks=2, on_evict=lambda *a: evicted.append(a)) as d:
        assert _states(d) == dict.fromkeys(TASKS, "known")
        d.predict(["yes"], task="sent")
        info = d.tasks()[2]
        assert isinstance(info, TaskInfo) and info.name == "sent" and info.use_count == 1 and info.size_bytes > 0
        assert info.source.endswith("tasks/sent")
        d.load_task("topic", pin=True)
        assert _states(d) == {"para": "known", "score": "known", "sent": "loaded", "topic": "pinned"}
        d.predict(PAIRS, task="para")  # evicts sent (topic is pinned)
        assert _states(d) == {"para": "loaded", "score": "known", "sent": "known", "topic": "pinned"}
        assert evicted[-1][0] == "sent" and evicted[-1][2] == "evicted"
        d.load_task("para", pin=True)
        with pytest.raises(RegistryFullError, match=r"every loaded task is pinned \(para, topic\)"):
            d.predict(["yes"], task="sent")
        d.unload_task("para")
        assert _states(d) == {"para": "known", "score": "known", "sent": "known", "topic": "pinned"}
        assert d.predict(["yes"], task="sent")[0].task == "sent"
        # a mixed batch of more tasks than the budget still runs (evicted rows stay valid for the batch)
        d.unload_task("topic")
        out = d.predict_mixed([("sent", "yes"), ("topic", "yes"), ("para", ("a", "b"))])
        assert [p.task for p in out] == ["sent", "topic", "para"]
        assert sum(s != "known" for s in _states(d).values()) <= 2
    with Deployment.open(deploy_dir, memory_budget_bytes=1) as d:
        with pytest.raises(RegistryFullError, match="more than the whole memory_budget_bytes=1"):
            d.predict(["yes"], task="sent")


def test_load_task_from_path_fingerprint_and_schema(deploy_dir, dep, tmp_path):
    extra = tmp_path / "sent2"
    shutil.copytree(deploy_dir / "tasks" / "sent", extra)
    meta = json.loads((extra / "task.json").read_text())
    meta["name"] = "sent2"
    (extra / "task.json").write_text(json.dumps(meta))
    with Deployment.open(deploy_dir) as d:
        info = d.load_task(extra, priority=3)
        assert (info.name, info.state, info.priority) == ("sent2", "loaded", 3)
        a, b = d.predict(TEXTS, task="sent2"), d.predict(TEXTS, task="sent")
        assert [p.score for p in a] == [p.score for p in b]
        other = tmp_path / "other"
        shutil.copytree(extra, other)
        meta["name"], meta["featurizer_fingerprint"] = "other", "0" * 64
        (other / "task.json").write_text(json.dumps(meta))
        with pytest.raises(FingerprintMismatchError, match="was exported for featurizer 000000000000"):
            d.load_task(other)
        newer = tmp_path / "newer"
        shutil.copytree(extra, newer)
        meta["schema_version"] = 99
        (newer / "task.json").write_text(json.dumps(meta))
        with pytest.raises(SchemaVersionError, match="schema_version 99"):
            d.load_task(newer)


# ---- integrity and providers -----------------------------------------------------------------------------


@pytest.fixture
def copy_dir(deploy_dir, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(deploy_dir, dst)
    return dst


def test_corrupt_task_file_is_refused_at_load(copy_dir):
    f = copy_dir / "tasks" / "sent" / "adapters.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with Deployment.open(copy_dir) as d:
        # the task is taken out of service (TaskFailedError) with the checksum error as its cause and reason
        with pytest.raises(TaskFailedError, match=r"adapters\.safetensors: sha256 differs") as failed:
            d.predict(["yes"], task="sent")
        assert isinstance(failed.value.__cause__, ChecksumError)
        assert d.predict(["yes"], task="topic")  # other tasks are unaffected


def test_truncated_featurizer_is_refused_at_open(copy_dir):
    f = copy_dir / "featurizer" / "adapted.onnx"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ChecksumError, match=r"featurizer/adapted.onnx: size 1000 bytes.*truncated"):
        Deployment.open(copy_dir)


def test_newer_manifest_and_missing_precision(copy_dir):
    with pytest.raises(ConfigError, match=r"precision 'int8' is not in deployment .* re-export with --precision"):
        Deployment.open(copy_dir, precision="int8")
    manifest = json.loads((copy_dir / "deployment.json").read_text())
    manifest["schema_version"] = 99
    (copy_dir / "deployment.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError, match="upgrade adapterdeploy"):
        Deployment.open(copy_dir)
    with pytest.raises(ArtifactError, match="does not exist"):
        Deployment.open(copy_dir / "nope")


def test_missing_gpu_provider_is_an_error_unless_falling_back(deploy_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(ProviderError, match="onnxruntime-gpu is not installed"):
        Deployment.open(deploy_dir, providers=["cuda"])
    with pytest.raises(ProviderError, match="TensorrtExecutionProvider"):
        Deployment.open(deploy_dir, providers="tensorrt")
    with Deployment.open(deploy_dir, providers=["cuda", "cpu"]) as d:
        assert d.provider == "CPUExecutionProvider" and d.bank_mode == "rows"
        assert d.predict(["yes"], task="sent")


def test_io_binding_path_runs_on_cpu(deploy_dir, dep):
    """The GPU code path (I/O binding, bank as OrtValues) exercised with CPU OrtValues."""
    rows = [(t, x) for t in TASKS for x in _inputs(t)]
    ref = dep.predict_mixed(rows)
    with Deployment.open(deploy_dir, bank_mode="resident") as d:
        d._engine.device = "cpu"
        got = d.predict_mixed(rows)
        d.unload_task("sent")
        got2 = d.predict_mixed(rows[:3])
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(_vec(a), _vec(b), rtol=0, atol=TOL)
    for a, b in zip(ref[:3], got2, strict=True):
        np.testing.assert_allclose(_vec(a), _vec(b), rtol=0, atol=TOL)


def test_closed_deployment_refuses(deploy_dir):
    d = Deployment.open(deploy_dir)
    d.close()
    with pytest.raises(Exception, match="is closed"):
        d.predict(["yes"], task="sent")


def test_thread_pools_follow_adapter_drop_and_spin(tiny_base_dir, deploy_dir, dep, tmp_path):
    """K = 0: the trunk is only the embeddings and runs on the calling thread; K >= 1: both graphs get the pool.
    Spin settings change speed, never results."""

    def threads(d: Deployment) -> tuple[int, int]:
        e = d._engine
        return e.trunk.get_session_options().intra_op_num_threads, e.adapted.get_session_options().intra_op_num_threads

    rows = _inputs("sent")
    with Deployment.open(deploy_dir, threads=2, spin_us=0) as k1:
        assert threads(k1) == (2, 2)
        got = np.stack([_vec(p) for p in k1.predict(rows, task="sent")])
        np.testing.assert_allclose(got, np.stack([_vec(p) for p in dep.predict(rows, task="sent")]), atol=1e-6)
    k0_dir, _, _ = _export(tiny_base_dir, tmp_path, {"sent": TASKS["sent"]}, adapter_drop=0)
    with Deployment.open(k0_dir, threads=2, spin_us=None) as k0:
        assert threads(k0) == (1, 2)
        assert len(k0.predict(rows, task="sent")) == len(rows)


# ---- concurrency -----------------------------------------------------------------------------------------


def test_threads_predict_while_tasks_load_and_unload(deploy_dir, dep):
    rows = [(t, x) for t in TASKS for x in _inputs(t)]
    expected = {(t, x): _vec(p) for (t, x), p in zip(rows, dep.predict_mixed(rows), strict=True)}
    errors: list[BaseException] = []
    stop = threading.Event()
    with Deployment.open(deploy_dir, max_loaded_tasks=2) as d:

        def predictor(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(40):
                    batch = [rows[i] for i in rng.choice(len(rows), size=int(rng.integers(1, 9)))]
                    for (t, x), p in zip(batch, d.predict_mixed(batch), strict=True):
                        np.testing.assert_allclose(_vec(p), expected[(t, x)], rtol=0, atol=TOL)
            except BaseException as exc:
                errors.append(exc)

        def churner(seed: int) -> None:
            rng = np.random.default_rng(seed)
            names = list(TASKS)
            try:
                while not stop.is_set():
                    name = names[int(rng.integers(len(names)))]
                    d.unload_task(name) if rng.random() < 0.5 else d.load_task(name)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=predictor, args=(s,)) for s in range(4)]
        churners = [threading.Thread(target=churner, args=(100 + s,)) for s in range(2)]
        for t in workers + churners:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        for t in churners:
            t.join()
        assert errors == []
        assert sum(i.state != "known" for i in d.tasks()) <= 2


# ---- no torch --------------------------------------------------------------------------------------------

_BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError(f'{name} is blocked in this test')
        return None
sys.meta_path.insert(0, _Block())
from adapterdeploy.runtime import Deployment
with Deployment.open(sys.argv[1], shared_thread_pool=True) as d:  # the process-wide pool, kept out of pytest
    p = d.predict_mixed([('sent', 'the movie was good'), ('para', ('a man', 'a woman'))])
    assert p[0].task == 'sent' and p[1].task == 'para', p
    d.fan_out(['yes'], tasks=['sent', 'topic'])
import adapterdeploy.runtime.commands, adapterdeploy.runtime.check
assert 'torch' not in sys.modules and 'transformers' not in sys.modules
print('ok', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))
"""


def test_runtime_runs_with_torch_unimportable(deploy_dir):
    out = subprocess.run([sys.executable, "-c", _BLOCKER, str(deploy_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"


# ---- other architectures ---------------------------------------------------------------------------------


def test_roberta_pairs_use_one_token_type(tiny_bases, tmp_path):
    tasks = {"para": ({"bottleneck": 4}, {"num_labels": 2}, True)}
    deploy, base, models = _export(tiny_bases["roberta"], tmp_path, tasks)
    with Deployment.open(deploy) as d:
        got = np.stack([_vec(p) for p in d.predict(PAIRS, task="para")])
    np.testing.assert_allclose(got, _torch_outputs(base, models["para"], PAIRS, ""), rtol=0, atol=TOL)


# ---- GPU (skipped without CUDA) --------------------------------------------------------------------------


def _cuda_ready() -> bool:
    import onnxruntime as ort

    from adapterdeploy.runtime.providers import cuda_device_problem

    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_problem() is None


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_match_cpu(deploy_dir, dep, provider, tmp_path):
    if not _cuda_ready():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    import onnxruntime as ort

    if provider == "tensorrt" and "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime-gpu build has no TensorRT provider")
    rows = [(t, x) for t in TASKS for x in _inputs(t)]
    ref = dep.predict_mixed(rows)
    with Deployment.open(deploy_dir, providers=[provider], engine_cache_dir=tmp_path / "trt") as d:
        assert d.bank_mode == "resident"
        got = d.predict_mixed(rows)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(_vec(a), _vec(b), rtol=0, atol=1e-4)
