"""The runtime on the real all-MiniLM-L6-v2 (marked slow): one export, PyTorch parity, mixed == single, check."""

from __future__ import annotations

import numpy as np
import pytest
from test_runtime import PAIRS, TEXTS, _export, _vec

from adapterdeploy.runtime import Deployment
from adapterdeploy.runtime.check import run_checklist

pytestmark = pytest.mark.slow

MINILM_TASKS = {
    "sent": ({"reduction_factor": 16}, {"num_labels": 2, "labels": ("neg", "pos")}, False),
    "para": ({"reduction_factor": 32}, {"num_labels": 2, "pooling": "mean"}, True),
}


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from adapterdeploy.models.base import default_base_dir

    return _export(
        default_base_dir(), tmp_path_factory.mktemp("rt-minilm"), MINILM_TASKS, adapter_drop=0, init_std=0.02
    )


def test_minilm_parity_mixed_and_check(minilm):
    from test_runtime import _torch_outputs

    deploy, base, models = minilm
    with Deployment.open(deploy) as d:
        single = {"sent": d.predict(TEXTS, task="sent"), "para": d.predict(PAIRS, task="para")}
        for name, rows in (("sent", TEXTS), ("para", PAIRS)):
            want = _torch_outputs(base, models[name], rows, "")
            np.testing.assert_allclose(np.stack([_vec(p) for p in single[name]]), want, rtol=0, atol=1e-5)
        rows = [("sent", t) for t in TEXTS] + [("para", p) for p in PAIRS]
        mixed = d.predict_mixed(rows[::-1])[::-1]
        for (name, x), p in zip(rows, mixed, strict=True):
            src = TEXTS if name == "sent" else PAIRS
            np.testing.assert_allclose(_vec(p), _vec(single[name][src.index(x)]), rtol=0, atol=1e-5)
    items = {i.name: i for i in run_checklist(deploy, reps=5)}
    assert all(i.status != "fail" for i in items.values()), items
    assert items["parity"].data["vs_pytorch"]
