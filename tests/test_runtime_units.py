"""Runtime pieces that need no exported deployment: registry, tokenization, bank, heads, providers, Prediction."""

from __future__ import annotations

import math
import threading
from dataclasses import FrozenInstanceError
from types import SimpleNamespace

import numpy as np
import pytest

from adapterdeploy.config import AdapterSignature, HeadConfig, SiteOptions
from adapterdeploy.errors import (
    ArtifactError,
    ConfigError,
    InputError,
    ProviderError,
    RegistryFullError,
    UnknownTaskError,
)
from adapterdeploy.runtime import Prediction, TaskInfo
from adapterdeploy.runtime.bank import INT8_ROW_LIMIT, BankLayout
from adapterdeploy.runtime.heads import Head, erf, predictions_from_logits
from adapterdeploy.runtime.providers import (
    CPU,
    CUDA,
    TENSORRT,
    normalize_providers,
    provider_problem,
    session_provider_list,
    trt_profile_options,
)
from adapterdeploy.runtime.registry import TaskRegistry
from adapterdeploy.runtime.tokenization import TextEncoder, length_buckets, validate_rows

# ---- registry -------------------------------------------------------------------------------------------


class FakeLoader:
    """Payload = the name; size from a table; records every read."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.reads: list[str] = []

    def __call__(self, name, source):
        self.reads.append(name)
        return f"payload:{name}", self.sizes.get(name, 10)


def states(reg: TaskRegistry) -> dict[str, str]:
    return {i.name: i.state for i in reg.infos()}


def test_registry_steps_count_budget():
    evicted: list[tuple[str, int, str]] = []
    loader = FakeLoader({})
    reg = TaskRegistry(loader, max_loaded=2, on_evict=lambda n, b, r: evicted.append((n, b, r)))
    for name in "abc":
        reg.add(name, f"/tasks/{name}")
    assert states(reg) == {"a": "known", "b": "known", "c": "known"}
    assert loader.reads == []  # adding reads nothing

    assert reg.get("a") == "payload:a"
    assert states(reg) == {"a": "loaded", "b": "known", "c": "known"}
    reg.get("b")
    assert reg.loaded_names() == ["a", "b"]
    reg.get("a")  # a is now most recently used
    reg.get("c")  # evicts b (LRU)
    assert states(reg) == {"a": "loaded", "b": "known", "c": "loaded"}
    assert evicted == [("b", 10, "evicted")]
    info = reg.info("a")
    assert (info.use_count, info.size_bytes, info.source) == (2, 10, "/tasks/a")
    assert info.last_used is not None

    reg.pin("c")
    assert states(reg)["c"] == "pinned"
    reg.get("b")  # a is the only unpinned loaded task -> evicted
    assert states(reg) == {"a": "known", "b": "loaded", "c": "pinned"}
    reg.pin("b")
    with pytest.raises(RegistryFullError) as exc:
        reg.get("a")
    msg = str(exc.value)
    assert "every loaded task is pinned" in msg and "b, c" in msg and "max_loaded_tasks=2" in msg
    assert states(reg) == {"a": "known", "b": "pinned", "c": "pinned"}  # nothing changed

    reg.unload("b")  # unload unpins and frees
    assert states(reg) == {"a": "known", "b": "known", "c": "pinned"}
    assert evicted[-1] == ("b", 10, "unloaded")
    reg.get("a")
    assert states(reg) == {"a": "loaded", "b": "known", "c": "pinned"}
    reg.pin("c", False)
    assert states(reg)["c"] == "loaded"
    assert loader.reads == ["a", "b", "c", "b", "a"]


def test_registry_bytes_budget_and_priorities():
    loader = FakeLoader({"a": 40, "b": 40, "c": 40, "big": 500})
    reg = TaskRegistry(loader, max_bytes=100)
    for name in ("a", "b", "c", "big"):
        reg.add(name, name)
    reg.load("a", priority=5)
    reg.load("b")
    assert reg.loaded_bytes() == 80
    reg.get("b")
    reg.get("a")  # a most recent, but b has lower priority -> b evicted first anyway
    reg.get("c")
    assert states(reg) == {"a": "loaded", "b": "known", "big": "known", "c": "loaded"}
    assert reg.info("a").priority == 5 and reg.loaded_bytes() == 80
    with pytest.raises(RegistryFullError, match="needs 500 bytes, more than the whole memory_budget_bytes=100"):
        reg.get("big")
    reg.pin("a")
    reg.pin("c")
    with pytest.raises(RegistryFullError, match=r"memory_budget_bytes=100 \(80 in use, 40 needed\)"):
        reg.get("b")


def test_registry_unknown_and_config_errors():
    reg = TaskRegistry(FakeLoader({}))
    reg.add("sst2", "x")
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'; known tasks: sst2"):
        reg.get("nope")
    with pytest.raises(ConfigError):
        TaskRegistry(FakeLoader({}), max_loaded=0)
    with pytest.raises(ConfigError):
        TaskRegistry(FakeLoader({}), max_bytes=-1)
    reg.get("sst2")
    reg.add("sst2", "elsewhere")  # new source drops the stale weights
    assert states(reg) == {"sst2": "known"}
    reg.remove("sst2")
    assert reg.names() == []


def test_registry_info_is_frozen():
    reg = TaskRegistry(FakeLoader({}))
    reg.add("a", "a")
    info = reg.info("a")
    assert isinstance(info, TaskInfo)
    with pytest.raises(FrozenInstanceError):
        info.state = "loaded"  # type: ignore[misc]


def test_registry_threads_load_once_and_survive_churn():
    loader = FakeLoader({})
    reg = TaskRegistry(loader, max_loaded=3)
    names = [f"t{i}" for i in range(8)]
    for n in names:
        reg.add(n, n)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                n = names[rng.integers(len(names))]
                op = rng.integers(4)
                if op == 0:
                    reg.unload(n)
                else:
                    assert reg.get(n) == f"payload:{n}"
                assert len(reg.loaded_names()) <= 3
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(reg.loaded_names()) <= 3


# ---- tokenization ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_base_dir) -> TextEncoder:
    return TextEncoder(tiny_base_dir / "tokenizer.json", max_length=12)


def test_tokenize_dynamic_padding_and_truncation(encoder):
    rows = ["good movie", "the movie was really very very good and the plot was great fun to see"]
    toks = encoder.tokenize(rows)
    assert [t.truncated for t in toks] == [False, True]
    assert len(toks[0].ids) == 4 and len(toks[1].ids) == 12
    assert toks[1].count == encoder.count([rows[1]])[0] > 12
    padded = encoder.pad(toks[:1])
    assert padded.input_ids.shape == (1, 4)  # padded to the longest row of the batch, not max_length
    padded = encoder.pad(toks)
    assert padded.input_ids.shape == (2, 12) and padded.input_ids.dtype == np.int64
    assert padded.attention_mask[0].tolist() == [1] * 4 + [0] * 8
    assert (padded.input_ids[0, 4:] == encoder.pad_id).all()
    assert padded.truncated.tolist() == [False, True]


def test_tokenize_strict_refuses_long_rows(encoder):
    long = "good " * 30
    with pytest.raises(InputError) as exc:
        encoder.tokenize(["fine", long], strict=True, labels=["rows[0]", "rows[7]"])
    msg = str(exc.value)
    assert "rows[7] has 32 tokens" in msg and "max_length is 12" in msg and "strict=False" in msg


def test_tokenize_pairs_and_token_types(tiny_base_dir, encoder):
    toks = encoder.tokenize([("good movie", "bad film")])
    assert set(toks[0].type_ids) == {0, 1}
    single = TextEncoder(tiny_base_dir / "tokenizer.json", max_length=12, single_token_type=True)
    padded = single.pad(single.tokenize([("good movie", "bad film")]))
    assert padded.token_type_ids.sum() == 0
    # a pair over the limit is cut longest-first and flagged
    toks = encoder.tokenize([("good " * 10, "bad")])
    assert toks[0].truncated and len(toks[0].ids) == 12


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ("a text", "single str"),
        ([""], r"inputs\[0\] is an empty text"),
        (["ok", "   "], r"inputs\[1\] is an empty text"),
        ([3], r"inputs\[0\] is a int"),
        ([None], r"inputs\[0\] is a NoneType"),
        ([("a", "b", "c")], "of 3 items"),
        ([("a", 2)], "second text of the pair is a int"),
        ([("", "b")], "first text of the pair is empty"),
        (42, "must be a list"),
    ],
)
def test_validate_rows_errors(inputs, match):
    with pytest.raises(InputError, match=match):
        validate_rows(inputs)


def test_length_buckets():
    lengths = [5, 1, 9, 3, 7, 2]
    chunks = length_buckets(lengths, 2)
    assert chunks == [[1, 5], [3, 0], [4, 2]]
    assert sorted(i for c in chunks for i in c) == list(range(6))
    # weights: each index expands to 3 rows; a chunk still holds at least one index
    assert length_buckets([1, 2], 2, [3, 3]) == [[0], [1]]


# ---- bank ----------------------------------------------------------------------------------------------


def _layout(H=4, fixed_m=None, signature=None, int8=False):
    """A one-layer bank; ``int8``: the int8 variant's graph inputs (int8 projections plus their _scale inputs)."""
    sig = signature or AdapterSignature("after_layer", "relu", SiteOptions(), False)
    names = [f"bank.1.layer.{k}" for k in ("down_w", "down_b", "up_w", "up_b")]
    m = fixed_m or "bottleneck"
    shapes = {
        "down_w": ["tasks", H, m],
        "down_b": ["tasks", m],
        "up_w": ["tasks", m, H],
        "up_b": ["tasks", H],
        "down_w_scale": ["tasks", 1, m],
        "up_w_scale": ["tasks", 1, H],
    }
    quantized = ("down_w", "up_w") if int8 else ()
    args = [
        SimpleNamespace(name=n, shape=shapes[n.rsplit(".", 1)[1]], type=f"tensor({'int8' if q else 'float'})")
        for n in names
        for q in [n.rsplit(".", 1)[1] in quantized]
    ]
    args += [
        SimpleNamespace(name=f"bank.1.layer.{k}_scale", shape=shapes[f"{k}_scale"], type="tensor(float)")
        for k in quantized
    ]
    return BankLayout.from_session_inputs(args, names, H, sig), names


def _task_tensors(m, H=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "bank.1.layer.down_w": rng.normal(size=(H, m)).astype(np.float32),
        "bank.1.layer.down_b": rng.normal(size=(m,)).astype(np.float32),
        "bank.1.layer.up_w": rng.normal(size=(m, H)).astype(np.float32),
        "bank.1.layer.up_b": rng.normal(size=(H,)).astype(np.float32),
        "head.out.w": np.zeros((H, 2), np.float32),
    }


def _adapter(feeds, t, x):
    """Reference adapter of bank row t on x [H], with relu (the padding must not change it)."""
    d = np.maximum(x @ feeds["bank.1.layer.down_w"][t] + feeds["bank.1.layer.down_b"][t], 0)
    return d @ feeds["bank.1.layer.up_w"][t] + feeds["bank.1.layer.up_b"][t]


def test_bank_gather_pads_bottleneck_exactly():
    layout, _ = _layout()
    a = layout.task_rows("a", _task_tensors(2, seed=1), 2)
    b = layout.task_rows("b", _task_tensors(3, seed=2), 3)
    assert a.arrays["bank.1.layer.down_w"].shape == (1, 4, 2)
    assert layout.gather([a])["bank.1.layer.down_w"] is a.arrays["bank.1.layer.down_w"]  # no copy for one task
    feeds = layout.gather([a, b])
    assert feeds["bank.1.layer.down_w"].shape == (2, 4, 3) and feeds["bank.1.layer.up_w"].shape == (2, 3, 4)
    x = np.random.default_rng(3).normal(size=4).astype(np.float32)
    np.testing.assert_allclose(_adapter(feeds, 0, x), _adapter(layout.gather([a]), 0, x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(_adapter(feeds, 1, x), _adapter(layout.gather([b]), 0, x), rtol=0, atol=1e-6)
    assert a.nbytes == sum(v.nbytes for v in a.arrays.values())


def test_bank_fixed_m_and_errors():
    layout, _ = _layout(fixed_m=4)
    rows = layout.task_rows("a", _task_tensors(2), 2)
    assert rows.m == 4 and rows.arrays["bank.1.layer.up_w"].shape == (1, 4, 4)
    with pytest.raises(ArtifactError, match="bottleneck 8, the featurizer's bank holds at most 4"):
        layout.task_rows("big", _task_tensors(8), 8)
    layout, _ = _layout()
    bad = _task_tensors(2)
    bad["bank.1.layer.up_w"] = np.zeros((3, 4), np.float32)
    with pytest.raises(ArtifactError, match=r"says bottleneck 2, its adapter weights have \[2, 3\]"):
        layout.task_rows("bad", bad, 2)  # the bottleneck is read from the weights, and must agree
    bad["bank.1.layer.up_w"] = np.zeros((2, 5), np.float32)
    with pytest.raises(ArtifactError, match=r"up_w has shape \[2, 5\], the bank expects \[2, 4\]"):
        layout.task_rows("bad", bad, 2)
    extra = _task_tensors(2)
    extra["bank.0.layer.down_w"] = np.zeros((4, 2), np.float32)
    with pytest.raises(ArtifactError, match="no input for"):
        layout.task_rows("x", extra, 2)
    partial = {k: v for k, v in _task_tensors(2).items() if "up_b" not in k}
    assert not layout.task_rows("p", partial, 2).arrays["bank.1.layer.up_b"].any()  # zero row = no adapter


def test_bank_int8_rows_quantized_per_column_at_load():
    """The int8 variant's bank (issue 15): rows quantized once at load, one scale per output column; padding
    and absent sites stay exact zeros; a graph without the scale input is a clear error."""
    layout, _ = _layout(int8=True)
    a = layout.task_rows("a", _task_tensors(2, seed=1), 2)
    b = layout.task_rows("b", _task_tensors(3, seed=2), 3)
    w = _task_tensors(3, seed=2)["bank.1.layer.down_w"]
    q, scale = b.arrays["bank.1.layer.down_w"][0], b.arrays["bank.1.layer.down_w_scale"][0]
    assert q.dtype == np.int8 and scale.shape == (1, 3) and np.abs(q).max() == INT8_ROW_LIMIT
    np.testing.assert_allclose(q * scale, w, rtol=0, atol=float(scale.max()) / 2 + 1e-7)
    assert b.arrays["bank.1.layer.up_w_scale"].shape == (1, 1, 4)
    feeds = layout.gather([a, b])
    assert feeds["bank.1.layer.down_w"].shape == (2, 4, 3) and feeds["bank.1.layer.down_w_scale"].shape == (2, 1, 3)
    assert not feeds["bank.1.layer.down_w"][0, :, 2].any() and feeds["bank.1.layer.down_w_scale"][0, 0, 2] == 0
    zero = layout.task_rows("z", {}, 1)
    assert not zero.arrays["bank.1.layer.up_w"].any() and not zero.arrays["bank.1.layer.up_w_scale"].any()
    fp32, _ = _layout()
    fp32_rows = fp32.task_rows("b", _task_tensors(3, seed=2), 3)
    assert 4 * b.arrays["bank.1.layer.up_w"].nbytes == fp32_rows.arrays["bank.1.layer.up_w"].nbytes
    sig = AdapterSignature("after_layer", "relu", SiteOptions(), False)
    names = ["bank.1.layer.down_w"]
    no_scale = [SimpleNamespace(name=names[0], shape=["tasks", 4, "bottleneck"], type="tensor(int8)")]
    with pytest.raises(ArtifactError, match=r"no fp32 bank\.1\.layer\.down_w_scale input"):
        BankLayout.from_session_inputs(no_scale, names, 4, sig)


# ---- heads and predictions -----------------------------------------------------------------------------


def test_erf_matches_math():
    x = np.linspace(-6, 6, 2001)
    np.testing.assert_allclose(erf(x), [math.erf(v) for v in x], rtol=0, atol=2e-7)


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu"])
def test_head_dense_layers(act):
    rng = np.random.default_rng(0)
    H = 6
    cfg = HeadConfig(num_labels=3, labels=("x", "y", "z"), hidden_layers=1, hidden_activation=act, pooling="mean")
    t = {
        "head.hidden.0.w": rng.normal(size=(H, H)),
        "head.hidden.0.b": rng.normal(size=H),
        "head.out.w": rng.normal(size=(H, 3)),
        "head.out.b": rng.normal(size=3),
    }
    head = Head.from_tensors("t", cfg, t, H)
    z = rng.normal(size=(5, H)).astype(np.float32)
    h = z @ t["head.hidden.0.w"] + t["head.hidden.0.b"]
    h = {
        "tanh": np.tanh,
        "relu": lambda v: np.maximum(v, 0),
        "gelu": lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2))),
    }[act](h)
    np.testing.assert_allclose(head.logits(z), h @ t["head.out.w"] + t["head.out.b"], rtol=1e-5, atol=1e-5)
    assert head.feature == "mean"
    with pytest.raises(ArtifactError, match="expected \\[6, 2\\]"):
        Head.from_tensors("t", HeadConfig(), {"head.out.w": np.zeros((6, 3)), "head.out.b": np.zeros(3)}, H)
    with pytest.raises(ArtifactError, match="neither head weights"):
        Head.from_tensors("t", HeadConfig(), {}, H)


def test_predictions_from_logits():
    cfg = HeadConfig(num_labels=3, labels=("neg", "neu", "pos"))
    preds = predictions_from_logits("s", cfg, np.array([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]]), np.array([False, True]))
    p = preds[0]
    assert p.label == "pos" and p.task == "s" and not p.truncated and p.value is None
    assert list(p.probabilities) == ["neg", "neu", "pos"]
    assert math.isclose(sum(p.probabilities.values()), 1.0, abs_tol=1e-9)
    assert math.isclose(p.score, math.exp(3) / (1 + math.e + math.exp(3)), rel_tol=1e-6)
    assert preds[1].label == "neg" and preds[1].truncated
    reg = predictions_from_logits("r", HeadConfig(problem_type="regression"), np.array([[2.5]]), np.array([False]))[0]
    assert reg.value == 2.5 and reg.score == 2.5 and reg.probabilities is None and reg.label is None
    d = p.to_dict()
    assert set(d) == {"task", "label", "score", "probabilities", "value", "truncated"}
    d["probabilities"]["neg"] = 9  # a copy: the frozen prediction is unchanged
    assert p.probabilities["neg"] != 9
    with pytest.raises(FrozenInstanceError):
        p.label = "x"  # type: ignore[misc]
    assert isinstance(p, Prediction)


# ---- providers ------------------------------------------------------------------------------------------


def test_normalize_providers():
    assert [c.name for c in normalize_providers(None)] == [CPU]
    assert [c.name for c in normalize_providers("cuda")] == [CUDA]
    got = normalize_providers([("tensorrt", {"trt_fp16_enable": True}), "cpu"])
    assert [c.name for c in got] == [TENSORRT, CPU] and got[0].options == {"trt_fp16_enable": True}
    with pytest.raises(ConfigError, match="unknown execution provider 'rocm'"):
        normalize_providers(["rocm"])
    with pytest.raises(ConfigError, match="empty"):
        normalize_providers([])


def test_provider_problem_names_what_is_missing():
    assert provider_problem(CPU, [CPU]) is None
    msg = provider_problem(CUDA, [CPU])
    assert "onnxruntime-gpu is not installed" in msg and "adapterdeploy[gpu]" in msg


def test_session_provider_lists(tmp_path):
    trt = session_provider_list(
        normalize_providers("tensorrt")[0], [TENSORRT, CUDA, CPU], precision="fp16", cache_dir=tmp_path / "cache"
    )
    assert [p[0] for p in trt] == [TENSORRT, CUDA, CPU]
    opts = trt[0][1]
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()
    assert [
        p[0]
        for p in session_provider_list(normalize_providers("cuda")[0], [CUDA, CPU], precision="fp32", cache_dir=None)
    ] == [CUDA, CPU]
    prof = trt_profile_options({"input_ids": ((1, 1), (8, 64), (32, 128))})
    assert prof["trt_profile_max_shapes"] == "input_ids:32x128"


def test_missing_gpu_provider_raises_provider_error():
    import onnxruntime as ort

    from adapterdeploy.runtime.providers import raise_unavailable

    if CUDA in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    problem = provider_problem(CUDA, ort.get_available_providers())
    with pytest.raises(ProviderError, match=r"onnxruntime-gpu is not installed.*'cpu'"):
        raise_unavailable(normalize_providers(["cuda"]), [problem])


@pytest.mark.parametrize(
    ("spin_us", "entries"),
    [
        (0, {"session.intra_op.allow_spinning": "0"}),
        (50, {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": "50"}),
        (None, {}),  # onnxruntime's own default: no entry at all
    ],
)
def test_session_spin_policy(spin_us, entries):
    from adapterdeploy.runtime.sessions import SessionFactory

    so = SessionFactory(threads=2, spin_us=spin_us).options()
    got = {}
    for key in ("session.intra_op.allow_spinning", "session.intra_op.spin_duration_us"):
        try:
            got[key] = so.get_session_config_entry(key)
        except RuntimeError:  # onnxruntime: "does not have configuration with key"
            pass
    assert got == entries
    assert so.intra_op_num_threads == 2


@pytest.mark.parametrize("bad", [-1, 2.5, "50"])
def test_session_spin_policy_refuses_bad_values(bad):
    from adapterdeploy.runtime.sessions import SessionFactory

    with pytest.raises(ConfigError, match="spin_us"):
        SessionFactory(spin_us=bad)


# ---- RuntimeOptions: one object from the CLIs, the server settings and Python callers ----------------------
def test_runtime_options_validate_and_name_the_problem():
    from adapterdeploy.errors import ConfigError
    from adapterdeploy.runtime.options import RuntimeOptions

    assert RuntimeOptions(providers="cuda").providers == ("cuda",)
    assert RuntimeOptions(providers=[["cuda", {"device_id": 0}], "cpu"]).providers == (
        ("cuda", {"device_id": 0}),
        "cpu",
    )
    for bad, match in (
        ({"batch_size": 0}, "batch_size"),
        ({"threads": True}, "threads"),
        ({"spin_us": -1}, "spin_us"),
        ({"bank_mode": "everything"}, "bank_mode"),
        ({"providers": [42]}, "provider"),
    ):
        with pytest.raises(ConfigError, match=match):
            RuntimeOptions(**bad)
    with pytest.raises(ConfigError, match=r"unknown runtime option.*spin\b.*known: precision"):
        RuntimeOptions().with_changes(spin=3)
    opts = RuntimeOptions(precision="int8", threads=2, memory_budget_bytes=1 << 20)
    assert RuntimeOptions.from_dict(opts.to_dict()) == opts


def test_predict_check_and_serve_declare_the_same_runtime_flags():
    from adapterdeploy.runtime.commands import check, predict
    from adapterdeploy.serving.commands import serve

    def flags(cmd):
        return {
            (o.opts[0], str(o.type), o.default, o.help)
            for o in cmd.params
            if o.name
            in {"precision", "providers", "threads", "spin_us", "max_loaded_tasks", "memory_budget", "bank_mode"}
        }

    assert len(flags(predict)) == 7
    assert flags(predict) == flags(check) == flags(serve)
