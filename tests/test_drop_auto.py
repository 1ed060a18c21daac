"""``export --adapter-drop auto``: K chosen from each task's dev metric, the table in the manifest and inspect."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adapterdeploy.cli import main
from adapterdeploy.errors import ConfigError
from adapterdeploy.exporter.drop_search import choose_adapter_drop
from adapterdeploy.models.checkpoint import load_checkpoint
from tests.exporter_helpers import make_checkpoint, torch_logits

WORDS = "the movie was good a very bad film and boring plot yes one two three four five six seven great".split()


def _dev_file(base, ckpt_dir: Path, path: Path, n: int = 40, seed: int = 0) -> Path:
    """Rows labelled with the task's own full-adapter predictions: accuracy 1.0 at K = 0 by construction."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(n)]
    labels = torch_logits(base, ckpt_dir, texts, 48).argmax(-1)
    path.write_text("label\ttext\n" + "".join(f"{y}\t{t}\n" for y, t in zip(labels, texts, strict=True)))
    return path


@pytest.fixture(scope="module")
def two_tasks(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("drop-auto")
    ckpts = [make_checkpoint(tiny_base, root, f"t{i}", placement="after_layer", seed=i, std=0.5) for i in range(2)]
    devs = {f"t{i}": _dev_file(tiny_base, c, root / f"dev{i}.tsv", seed=i) for i, c in enumerate(ckpts)}
    return root, ckpts, devs


def test_auto_picks_the_largest_k_within_the_bound(tiny_base, tiny_base_dir, two_tasks, tmp_path):
    _, ckpts, devs = two_tasks
    loaded = [load_checkpoint(c) for c in ckpts]
    _, table = choose_adapter_drop(tiny_base, loaded, devs, 48, max_drop=100.0)
    losses = {k: max(t["loss_points"][k] for t in table["tasks"].values()) for k in map(str, table["candidates"])}
    assert losses["0"] == 0.0 and all(t["scores"]["0"] == 1.0 for t in table["tasks"].values())
    assert max(losses.values()) > 0, "dropping adapters must cost something on these tasks, or the test is vacuous"
    # A bound between two observed losses: the rule says which K must come out.
    bound = sorted(set(losses.values()))[1] - 1e-3 if len(set(losses.values())) > 1 else 0.0
    expect = max(int(k) for k, v in losses.items() if v <= bound)
    # The table's scores are the real accuracies of the task with adapters below K removed.
    for name, ckpt_dir in zip(("t0", "t1"), ckpts, strict=True):
        lines = devs[name].read_text().splitlines()[1:]
        y = np.array([int(s.split("\t")[0]) for s in lines])
        texts = [s.split("\t")[1] for s in lines]
        acc = float((torch_logits(tiny_base, ckpt_dir, texts, 48, adapter_drop=3).argmax(-1) == y).mean())
        assert abs(acc - table["tasks"][name]["scores"]["3"]) < 1e-6

    out = tmp_path / "deploy"
    res = CliRunner().invoke(
        main,
        [
            "export",
            "--base",
            str(tiny_base_dir),
            "--task",
            str(ckpts[0]),
            "--task",
            str(ckpts[1]),
            "--out",
            str(out),
            "--adapter-drop",
            "auto",
            "--max-drop",
            str(bound),
            "--eval",
            f"t0={devs['t0']}",
            "--eval",
            f"t1={devs['t1']}",
            "--max-length",
            "32",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "deployment.json").read_text())
    assert manifest["featurizer"]["adapter_drop"] == expect
    drop = manifest["adapter_drop_eval"]
    assert drop["mode"] == "auto" and drop["chosen"] == expect and drop["max_drop"] == pytest.approx(bound)
    assert set(drop["fanout_speed"]["ms"]) == {"0", str(expect)} and all(
        v > 0 for v in drop["fanout_speed"]["ms"].values()
    )
    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0 and f"AdapterDrop auto: chose K={expect}" in shown.output


def test_auto_needs_a_dev_file_per_task(tiny_base_dir, two_tasks, tmp_path):
    _, ckpts, devs = two_tasks
    res = CliRunner().invoke(
        main,
        [
            "export",
            "--base",
            str(tiny_base_dir),
            "--task",
            str(ckpts[0]),
            "--task",
            str(ckpts[1]),
            "--out",
            str(tmp_path / "d"),
            "--adapter-drop",
            "auto",
            "--eval",
            f"t0={devs['t0']}",
            "--quiet",
        ],
    )
    assert res.exit_code != 0 and "needs a dev file for every task; none for ['t1']" in res.output
    assert not (tmp_path / "d").exists()
    bad = CliRunner().invoke(
        main, ["export", "--task", str(ckpts[0]), "--out", str(tmp_path / "d"), "--adapter-drop", "some"]
    )
    assert bad.exit_code == 2 and "nor 'auto'" in bad.output
    with pytest.raises(ConfigError, match="max-drop"):
        choose_adapter_drop(None, [], {}, 48, max_drop=-1)  # type: ignore[arg-type]
