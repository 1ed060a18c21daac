"""``python -m benchmarks.tokenize_once DEPLOY_DIR``: the server's tokenization CPU per request, before vs now.

A (before "tokenize once"): the server counted tokens (one untruncated encode per text) and the forward
tokenized the same texts again. B (now): one encode in the server, the encodings go to the forward.
Requests of 8 texts x 30 words, 200 per round, 7 rounds interleaved A B A B; CPU is ``time.process_time``
(all threads: ``tokenizers`` encodes a batch on several threads). Prints the medians and the load average.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

from adapterdeploy.runtime import Deployment

__all__ = ["main"]

WORDS = (
    "the a good bad movie film story plot actor market stock price people world day year new best worst "
    "really quite never always performance music director"
).split()


def main(deploy_dir: str, rounds: int = 7) -> dict:
    rng = random.Random(0)
    requests = [[" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(8)] for _ in range(200)]
    with Deployment.open(deploy_dir) as d:

        def before(texts: list[str]) -> None:
            d.token_counts(texts)  # the server's count for its limits and the batcher
            d.encode(texts)  # the forward's own tokenization (same work as TextEncoder.tokenize)

        def now(texts: list[str]) -> None:
            d.encode(texts)

        ms: dict[str, list[float]] = {"A_before": [], "B_now": []}
        for _ in range(rounds):
            for side, work in (("A_before", before), ("B_now", now)):
                t0 = time.process_time()
                for texts in requests:
                    work(texts)
                ms[side].append(1000 * (time.process_time() - t0) / len(requests))
    a, b = statistics.median(ms["A_before"]), statistics.median(ms["B_now"])
    return {
        "cpu_ms_per_request": {"A_before": round(a, 3), "B_now": round(b, 3)},
        "saved_ms": round(a - b, 3),
        "rounds": {k: [round(x, 3) for x in v] for k, v in ms.items()},
        "loadavg_1_5_15": os.getloadavg(),
    }


if __name__ == "__main__":
    print(main(sys.argv[1]))
