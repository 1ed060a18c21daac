"""Shared fixtures: tiny random BERT-family bases built in code (no downloads), cached per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_DATA = REPO / "examples" / "data"


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (hidden 32, 4 layers) with a small WordPiece tokenizer."""
    from adapterdeploy.models.tiny import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_base(tiny_base_dir: Path):
    from adapterdeploy.models.base import load_base

    return load_base(tiny_base_dir)


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny base directory per supported architecture."""
    from adapterdeploy.models.tiny import build_tiny_base

    return {
        mt: build_tiny_base(tmp_path_factory.mktemp(f"tiny-{mt}"), mt)
        for mt in ("bert", "roberta", "xlm-roberta", "electra")
    }


@pytest.fixture(scope="module")
def deploy_dir(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serving / CLI tests' tiny two-task deployment (``serving_fixtures.build_deployment``), built once per
    test module so a module that edits its files never affects another; a module may define its own."""
    from serving_fixtures import build_deployment

    return build_deployment(tiny_base_dir, tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def deployment(deploy_dir: Path):
    """``deploy_dir`` opened once per module (servers in the same process share it)."""
    from adapterdeploy.runtime import Deployment

    with Deployment.open(deploy_dir) as dep:
        yield dep
