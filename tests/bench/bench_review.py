"""How fast the review app answers on a big book: a labels output made up of one book with ``--instances``
character instances (windows of 4, a few identities each, clustered unit vectors), served by the real app.

Measures (median of ``--repeats``, over HTTP on 127.0.0.1): the book page's JSON, an identity page's JSON, the
queue, and storing one action (a name: the app validates it on its state, appends it to SQLite and returns).
Targets (issue 28): a book of 2,000 instances opens in < 300 ms; a queue answer is stored in < 50 ms.

    python tests/bench/bench_review.py [--instances 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reid.core.contracts.crops import crops_output  # noqa: E402
from reid.core.contracts.labels import CENTROID_SCHEMA, LABEL_SCHEMA, labels_output, windows_output  # noqa: E402
from reid.core.contracts.manifest import error_table, table_to_parquet_bytes  # noqa: E402
from reid.core.io import write_bytes_atomic  # noqa: E402
from reid.stages.review.config import ReviewConfig  # noqa: E402
from reid.stages.review.serve import start_in_background  # noqa: E402

SERIES = 7


def make_labels(root: str, instances: int, characters: int, seed: int = 0) -> None:
    """One book: pages of 4 panels, one window per page, 4 character instances a window (one per panel)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(characters, 64))
    rows, centroids = [], []
    windows = instances // 4
    per_shard = 50
    for w in range(windows):
        page, panels = w, [f"{SERIES}_{w}_{p}" for p in range(4)]
        window = "+".join(panels)
        cast = rng.choice(characters, 4, replace=False)
        for k, (panel, char) in enumerate(zip(panels, cast, strict=True)):
            vector = centres[char] + 0.3 * rng.normal(size=64)
            key = f"{panel}#0"
            rows.append({"row_id": f"{SERIES}_{page}_{k}_face_0@{window}", "instance_id": f"{SERIES}_{page}_{k}_face_0",
                         "type": "face", "panel_id": panel, "series_id": SERIES, "window_id": window, "char_key": key,
                         "identity": k, "series_identity": int(char) if rng.random() > 0.1 else int(rng.integers(characters)),
                         "distance": 0.1, "box": [0, 0, 10, 10], "model": "bench", "model_sha256": "0" * 64,
                         "run_id": "bench", "shard": f"{SERIES}-{w // per_shard:05d}"})
            centroids.append({"series_id": SERIES, "window_id": window, "identity": k, "members": 1,
                              "centroid": (vector / np.linalg.norm(vector)).tolist(), "member_keys": [key],
                              "member_panels": [panel], "shard": rows[-1]["shard"]})
    final, windows_out = labels_output(root), windows_output(root)
    shards = sorted({r["shard"] for r in rows})
    for shard in shards:
        table = pa.Table.from_pylist([r for r in rows if r["shard"] == shard], schema=LABEL_SCHEMA)
        final.commit(shard, table, error_table([]), input_rows=table.num_rows)
        cs = [{k: v for k, v in c.items() if k != "shard"} for c in centroids if c["shard"] == shard]
        write_bytes_atomic(windows_out.sidecar_path("centroids", shard),
                           table_to_parquet_bytes(pa.Table.from_pylist(cs, schema=CENTROID_SCHEMA)))
    final.finalize(shards)
    Path(root, "metrics.json").write_text(json.dumps({"link_threshold": 0.9}))


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--characters", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_labels(f"{tmp}/labels", args.instances, args.characters)
        crops_output(f"{tmp}/crops").finalize([])  # no thumbnails are asked for
        start = time.perf_counter()
        app = start_in_background(ReviewConfig(labels=f"{tmp}/labels", crops=f"{tmp}/crops", port=0))
        loaded = time.perf_counter() - start
        headers = {"X-Review-Token": app.token, "Content-Type": "application/json"}

        def get(path: str) -> dict:
            with urllib.request.urlopen(urllib.request.Request(app.base + path, headers=headers)) as r:
                return json.loads(r.read())

        def post(body: dict) -> dict:
            data = json.dumps(body).encode()
            with urllib.request.urlopen(urllib.request.Request(app.base + "/api/actions", data, headers)) as r:
                return json.loads(r.read())

        try:
            book = get(f"/api/books/{SERIES}")
            identity = book["identities"][0]["identity"]
            names = iter(range(10 ** 6))
            results = {
                "book page (JSON)": timed(lambda: get(f"/api/books/{SERIES}"), args.repeats),
                "identity page (JSON)": timed(lambda: get(f"/api/books/{SERIES}/identities/{identity}"), args.repeats),
                "queue (20 items)": timed(lambda: get("/api/queue?limit=20"), args.repeats),
                "store an action": timed(lambda: post({"kind": "name", "payload": {
                    "targets": [[SERIES, identity]], "name": f"n{next(names)}"}}), args.repeats),
            }
            q = get("/api/queue?limit=1")["items"][0]
            answer = ({"kind": "same", "payload": {"series": SERIES, "a": q["a"], "b": q["b"], "answer": "no"}}
                      if q["type"] == "same" else
                      {"kind": "belongs", "payload": {"series": SERIES, "unit": q["unit"], "identity": q["identity"],
                                                      "answer": "yes"}})
            results["store a queue answer"] = timed(lambda: post(answer), 1)
        finally:
            app.stop()
    print(f"review app, one book of {args.instances} instances ({len(book['identities'])} identities); "
          f"loaded in {loaded:.2f} s; median of {args.repeats} (ms):")
    for name, ms in results.items():
        print(f"  {name:<24}{ms:8.1f}")
    print(f"targets: book page < 300 ms ({results['book page (JSON)']:.0f}), queue answer stored < 50 ms "
          f"({results['store a queue answer']:.0f})")


if __name__ == "__main__":
    main()
