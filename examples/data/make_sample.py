"""Rebuild the demo sample in examples/data/ from ../shared/data (deterministic; see PROVENANCE.md).

    python examples/data/make_sample.py [--source ../shared/data]

Rows are chosen by hash, not by position: for each output file, the rows whose
``sha256("<task>/<split>:<line number>")`` are the N smallest, written in their original order with the
original header. Lines are copied byte for byte (no re-quoting), so the format is exactly the source's.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (task, output split) -> (source file, rows)
PLAN = {
    ("sst2", "train"): ("sst2/train.tsv", 1500),
    ("sst2", "dev"): ("sst2/dev.tsv", 400),
    ("mrpc", "train"): ("mrpc/train.tsv", 1500),
    ("mrpc", "dev"): ("mrpc/test.tsv", 400),
}


def sample(source: Path, task: str, split: str, rows: int) -> list[str]:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = lines[0], lines[1:]

    def key(i: int) -> str:
        return hashlib.sha256(f"{task}/{split}:{i + 2}".encode()).hexdigest()  # i + 2 = file line number

    keep = sorted(sorted(range(len(body)), key=key)[:rows])
    return [header] + [body[i] for i in keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=HERE.parents[2] / "shared" / "data")
    args = parser.parse_args()
    for (task, split), (rel, rows) in PLAN.items():
        out = HERE / task / f"{split}.tsv"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(sample(args.source / rel, task, split, rows)), encoding="utf-8")
        print(f"{out.relative_to(HERE)}: {rows} rows from {rel}")


if __name__ == "__main__":
    main()
