"""Benchmark of the label job (not run in CI). Prints ratios against baselines measured in the same run.

    python tests/bench/bench_label.py                       # full job on Ray at 1x and 4x corpus size
    python tests/bench/bench_label.py --mode inner --device cuda --arch resnet50 --face-size 96 --body-size 128

``--mode job``: builds synthetic corpora of 1x and ``--scale``x the series (same pages per series), crops them,
then runs ``jobs/label.py`` in a subprocess (its own local Ray, so the process tree holds every Ray worker)
and reports wall time, the embedding pass's instances/s and the peak memory (PSS of the whole process tree)
of both sizes, plus the bare model-forward throughput on pre-decoded tensors of the same character
instances (the ceiling: the faster of ``--cpus`` threads in one process and ``--cpus`` one-thread processes,
the layout of the job's CPU actors). ``--rounds`` interleaved rounds; medians are reported.
Targets: job / forward >= 0.8, wall(4x) / wall(1x) <= 4.4.

``--flip-average`` (both modes): the model embeds each crop and its mirror and averages them (what fine-tuning
saves by default); the bare forward of the same model in one pass is measured too and the ratio printed: the
flip's cost at inference.

``--mode inner`` (no Ray, no MLflow; runs on a bare GPU machine): the actor's inner loop on the same crops,
decoding in ``--decode-workers`` processes (the CPU tasks of the job) while the device embeds, against the
bare forward on the same device.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reid.core.models import ModelConfig, ReIDNet, save_model_checkpoint  # noqa: E402
from tests.bench.common import BENCH_ROOT, corpus  # noqa: E402

# -- memory of a process tree (Linux /proc) -------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(root: int) -> float:
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        total += _pss_kib(pid)
        todo += tree.get(pid, [])
    return total / 1024


class PeakMemory(threading.Thread):
    """Samples the PSS of a process tree every ``interval`` s; ``peak_mib`` is the largest sum seen.

    Not faster: reading ``smaps_rollup`` walks each process's page tables under its mmap lock, and sampling
    every 0.25 s slowed the 4x job's embedding pass from ~85 to ~50 boxes/s."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mib = pid, interval, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_mib = max(self.peak_mib, tree_pss_mib(self.pid))
            self.stop.wait(self.interval)


# -- inputs -----------------------------------------------------------------------------------------------------

def make_crops(out: Path, series: int, pages: int, seed: int, use_ray: bool) -> Path:
    """The benchmarks' cached synthetic corpus and its crops (Ray Data crop job, or in-process without Ray)."""
    from reid.core.contracts.manifest import ShardedOutput
    from reid.stages.crop import CropConfig, crop_shard, plan_shards, run_crop

    crops = out / "crops"
    if (crops / "_SUCCESS").exists():
        return crops
    comics_root = corpus(series, pages, seed, workers=min(8, os.cpu_count() or 1))
    cfg = CropConfig(comics_root=str(comics_root), out=str(crops), pages_per_shard=4, write_files=False,
                     mlflow_uri=f"sqlite:///{out}/mlflow.db", name=f"bench-crop-{series}")
    if use_ray:
        run_crop(cfg)
    else:
        shards, rows = plan_shards(cfg)[:2]
        with ProcessPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(crop_shard, [cfg] * len(shards), shards))
        ShardedOutput(str(crops), "instance_id").finalize(shards, rows)
    return crops


def save_model(path: Path, args, flip_average: bool) -> Path:
    """A randomly initialised Re-ID net (the label job's cost does not depend on its weights)."""
    torch.manual_seed(0)
    save_model_checkpoint(ReIDNet(ModelConfig(arch=args.arch, face_size=args.face_size, body_size=args.body_size,
                                              flip_average=flip_average)), str(path))
    return path


def flip_cost_line(flip_rate: float, one_pass_rate: float) -> str:
    return (f"flip average: bare forward {flip_rate:.0f} against {one_pass_rate:.0f} one pass on the same crops "
            f"= {flip_rate / one_pass_rate:.2f} x the one-pass rate")


def character_masks(crops: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(face_mask, body_mask) of every character instance of a crops output, and its number of boxes."""
    import pyarrow.parquet as pq

    from reid.core.contracts.crops import pair_rows

    faces, bodies, boxes = [], [], 0
    for path in sorted((crops / "data").glob("*.parquet")):
        table = pq.read_table(path)
        boxes += table.num_rows
        for char in pair_rows(table):
            faces.append(bool(char["face"]))
            bodies.append(bool(char["body"]))
    return np.asarray(faces), np.asarray(bodies), boxes


def _warm_embedder(model_path: Path | str, face_mask: np.ndarray, body_mask: np.ndarray, batch_size: int,
                   device: str):
    """The model in a CharacterEmbedder, random pre-decoded uint8 inputs for these masks, one batch run."""
    from reid.core.embedding import CharacterEmbedder
    from reid.core.models import load_model_checkpoint

    model, cfg, _ = load_model_checkpoint(str(model_path))
    embed = CharacterEmbedder(model, device, batch_size)
    rng = np.random.default_rng(0)
    n = len(face_mask)
    inputs = {"face": rng.integers(0, 256, (n, 3, cfg.face_size, cfg.face_size), dtype=np.uint8),
              "body": rng.integers(0, 256, (n, 3, cfg.body_size, cfg.body_size), dtype=np.uint8),
              "face_mask": face_mask, "body_mask": body_mask}
    embed.embed_uint8(**{k: v[:batch_size] for k, v in inputs.items()})
    return embed, inputs


def bare_forward_rate(model_path: Path, face_mask: np.ndarray, body_mask: np.ndarray, batch_size: int,
                      device: str, repeats: int = 2) -> float:
    """Character instances/s of the model alone on pre-decoded uint8 tensors (normalised on the device)."""
    embed, inputs = _warm_embedder(model_path, face_mask, body_mask, batch_size, device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        embed.embed_uint8(**inputs)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return len(face_mask) / best


def _forward_part(model_path: str, face_mask: np.ndarray, body_mask: np.ndarray, batch_size: int, repeats: int,
                  barrier, results) -> None:
    torch.set_num_threads(1)
    embed, inputs = _warm_embedder(model_path, face_mask, body_mask, batch_size, "cpu")
    for _ in range(repeats):
        barrier.wait()
        start = time.perf_counter()
        embed.embed_uint8(**inputs)
        results.put(time.perf_counter() - start)


def bare_forward_rate_procs(model_path: Path, face_mask: np.ndarray, body_mask: np.ndarray, batch_size: int,
                            procs: int, repeats: int = 2) -> float:
    """The same forward as ``procs`` one-thread processes, each on its share of the rows, started together
    (the layout of the job's CPU actors); rows / slowest process, best of ``repeats``."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_forward_part, args=(str(model_path), face_mask[i::procs], body_mask[i::procs],
                                                       batch_size, repeats, barrier, results))
               for i in range(procs)]
    for w in workers:
        w.start()
    times = [results.get(timeout=1800) for _ in range(procs * repeats)]
    for w in workers:
        w.join()
    # each round's procs results arrive before the next round starts (the barrier waits for all of them)
    return len(face_mask) / min(max(times[r * procs:(r + 1) * procs]) for r in range(repeats))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- mode job ---------------------------------------------------------------------------------------------------

def run_job(crops: Path, model_path: Path, out: Path, args) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "jobs/label.py"), "--model", str(model_path), "--crops", str(crops),
           "--out", str(out), "--ray-num-cpus", str(args.cpus), "--batch-size", str(args.batch_size),
           "--report-windows", "0", "--mlflow-uri", f"sqlite:///{out.parent}/mlflow.db", "--name", out.name]
    for flag, value in (("--num-cpus-per-actor", args.cpus_per_actor), ("--num-cpus-per-task", args.cpus_per_task)):
        cmd += [flag, str(value)] if value else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = PeakMemory(proc.pid)
    sampler.start()
    log, _ = proc.communicate(timeout=3600)
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"label job failed ({proc.returncode}):\n{log[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "embed_s": metrics["embed_seconds"], "rows": metrics["rows"] + metrics["unassigned"],
            "boxes_per_s": metrics["instances_per_s"], "steady_boxes_per_s": metrics.get("steady_instances_per_s", 0),
            "first_result_s": metrics.get("first_result_seconds", 0),
            "peak_mib": sampler.peak_mib}


def mode_job(args) -> None:
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    model_path = save_model(root / "model.pt", args, args.flip_average)
    one_pass_path = save_model(root / "model-one-pass.pt", args, flip_average=False) if args.flip_average else None
    import ray

    from reid.runtime.raycluster import init_ray

    sizes = {1: args.series, args.scale: args.series * args.scale}
    crops = {}
    init_ray(num_cpus=args.cpus)
    for scale, series in sizes.items():
        crops[scale] = make_crops(root / f"s{series}-p{args.pages}-seed{args.seed}", series, args.pages, args.seed,
                                  use_ray=True)
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    torch.set_num_threads(args.cpus)
    masks = {scale: character_masks(crops[scale]) for scale in sizes}
    rounds: list[dict[int, dict[str, float]]] = []
    for r in range(args.rounds):  # interleaved: a noisy minute hits one round, not one side of a ratio
        rounds.append({})
        for scale in sizes:
            face_mask, body_mask, boxes = masks[scale]
            threads = bare_forward_rate(model_path, face_mask, body_mask, args.batch_size, "cpu", repeats=1)
            procs = bare_forward_rate_procs(model_path, face_mask, body_mask, args.batch_size, args.cpus, repeats=1)
            one_pass = (bare_forward_rate(one_pass_path, face_mask, body_mask, args.batch_size, "cpu", repeats=1)
                        if one_pass_path else None)
            out = crops[scale].parent / f"labels-{int(time.time())}"
            job = run_job(crops[scale], model_path, out, args)
            shutil.rmtree(out, ignore_errors=True)
            per_char = boxes / len(face_mask)
            rounds[r][scale] = {**job, "characters": len(face_mask), "boxes": boxes,
                                "forward_threads_boxes_per_s": threads * per_char,
                                "forward_procs_boxes_per_s": procs * per_char,
                                "forward_boxes_per_s": max(threads, procs) * per_char}
            if one_pass is not None:
                rounds[r][scale]["forward_one_pass_threads_boxes_per_s"] = one_pass * per_char
            print(f"round {r + 1}/{args.rounds} {scale}x: " + _line(rounds[r][scale]), flush=True)
    print(json.dumps(rounds, indent=1))
    print(f"bare forward = the faster of {args.cpus} threads in one process and {args.cpus} one-thread processes;"
          f" median of {args.rounds} rounds:")
    for scale in sizes:
        med = {k: statistics.median(r[scale][k] for r in rounds) for k in rounds[0][scale]}
        ratios = [r[scale]["boxes_per_s"] / r[scale]["forward_boxes_per_s"] for r in rounds]
        steady = [r[scale]["steady_boxes_per_s"] / r[scale]["forward_boxes_per_s"] for r in rounds]
        print(f"{scale}x: {_line(med)}\n    job/forward per round: whole pass "
              f"{', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f}); steady "
              f"{', '.join(f'{x:.2f}' for x in steady)} (median {statistics.median(steady):.2f})")
        if args.flip_average:
            print("    " + flip_cost_line(med["forward_threads_boxes_per_s"],
                                          med["forward_one_pass_threads_boxes_per_s"]) + " (threads)")
    walls = [r[args.scale]["wall_s"] / r[1]["wall_s"] for r in rounds]
    embeds = [r[args.scale]["embed_s"] / r[1]["embed_s"] for r in rounds]
    peaks = [r[args.scale]["peak_mib"] / r[1]["peak_mib"] for r in rounds]
    print(f"{args.scale}x / 1x (median): wall {statistics.median(walls):.2f} (target <= {1.1 * args.scale:.1f}), "
          f"embed pass {statistics.median(embeds):.2f}, peak memory {statistics.median(peaks):.2f} for "
          f"{rounds[0][args.scale]['boxes'] / rounds[0][1]['boxes']:.2f}x the boxes")


def _line(r: dict[str, float]) -> str:
    return (f"{r['boxes']:.0f} boxes ({r['characters']:.0f} character instances); wall {r['wall_s']:.1f} s; embed pass "
            f"{r['embed_s']:.1f} s = {r['boxes_per_s']:.0f} boxes/s (first result after {r['first_result_s']:.1f} s, then "
            f"{r['steady_boxes_per_s']:.0f}); bare "
            f"forward {r['forward_threads_boxes_per_s']:.0f} (threads) / {r['forward_procs_boxes_per_s']:.0f} "
            f"(processes) boxes/s; job/forward {r['boxes_per_s'] / r['forward_boxes_per_s']:.2f} (steady "
            f"{r['steady_boxes_per_s'] / r['forward_boxes_per_s']:.2f}); peak PSS {r['peak_mib']:.0f} MiB")


# -- mode inner -------------------------------------------------------------------------------------------------

def _prepare(args_tuple):
    from reid.stages.label import LabelConfig, prepare_shard

    crops, shard, face_size, body_size = args_tuple
    cfg = LabelConfig(model="unused", crops=crops, out="unused")
    return prepare_shard(cfg, {"shard": shard, "windows": []}, face_size, body_size, pages_per_shard=4)


def mode_inner(args) -> None:
    from reid.core.contracts.manifest import ShardedOutput
    from reid.core.embedding import CharacterEmbedder
    from reid.core.models import load_model_checkpoint

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    model_path = save_model(root / "model.pt", args, args.flip_average)
    start = time.perf_counter()
    crops = make_crops(root / f"inner-s{args.series}-p{args.pages}-seed{args.seed}", args.series, args.pages, args.seed, use_ray=False)
    print(f"corpus + crops: {time.perf_counter() - start:.1f} s")
    face_mask, body_mask, boxes = character_masks(crops)
    forward = bare_forward_rate(model_path, face_mask, body_mask, args.batch_size, args.device)
    one_pass = (bare_forward_rate(save_model(root / "model-one-pass.pt", args, flip_average=False), face_mask,
                                  body_mask, args.batch_size, args.device) if args.flip_average else None)
    model, cfg, _ = load_model_checkpoint(str(model_path))
    embed = CharacterEmbedder(model, args.device, args.batch_size)
    shards = sorted(ShardedOutput(str(crops), "instance_id").committed())
    work = [(str(crops), s, cfg.face_size, cfg.body_size) for s in shards]
    results = {}
    embed.embed_uint8(**_prepare(work[0]).images)  # warm-up
    for workers in sorted({1, args.decode_workers}):
        # spawn: a forked child of a process that holds CUDA / OpenMP state can hang; one torch thread per
        # worker, as Ray gives a 1-CPU task (OMP_NUM_THREADS=1): else 16 threads per tiny resize oversubscribe
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            list(pool.map(_prepare, work[:workers]))  # start and import in every worker first
            _sync(args.device)
            start, n = time.perf_counter(), 0
            for prepared in pool.map(_prepare, work, chunksize=1):
                embed.embed_uint8(**prepared.images)
                n += len(prepared.characters)
            _sync(args.device)
            results[workers] = n / (time.perf_counter() - start)
    print(f"device {args.device}, {args.arch} {cfg.face_size}/{cfg.body_size} px, batch {args.batch_size}: "
          f"{len(face_mask)} character instances ({boxes} boxes) in {len(shards)} shards")
    print(f"bare forward on pre-decoded tensors: {forward:.0f} characters/s")
    if args.flip_average:
        print(flip_cost_line(forward, one_pass) + " (characters/s)")
    for workers, rate in results.items():
        print(f"decode in {workers} process(es) + embed: {rate:.0f} characters/s = {rate / forward:.2f} x forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("job", "inner"), default="job")
    parser.add_argument("--out", default=str(BENCH_ROOT / "label"))
    parser.add_argument("--series", type=int, default=4, help="series of the 1x corpus")
    parser.add_argument("--pages", type=int, default=24, help="pages per series")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="job mode: interleaved rounds (the median is reported)")
    parser.add_argument("--arch", default="resnet50", help="default: the paper's model (what a real run embeds)")
    parser.add_argument("--face-size", type=int, default=96)
    parser.add_argument("--body-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="both sides; 32 ran 1.35x faster than 64 here")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (job mode)")
    parser.add_argument("--cpus-per-actor", type=float, default=0,
                        help="Ray CPUs of an embedding actor (its torch threads: rounded up); default: the job's")
    parser.add_argument("--cpus-per-task", type=float, default=0,
                        help="Ray CPUs of a decoding task; default: the job's")
    parser.add_argument("--device", default="cpu", help="inner mode: cpu or cuda")
    parser.add_argument("--flip-average", action="store_true",
                        help="label with a model that averages each crop with its mirror (the fine-tuning default) "
                             "and also report its bare forward against the same model in one pass")
    parser.add_argument("--decode-workers", type=int, default=4, help="inner mode: decoding processes")
    args = parser.parse_args()
    mode_job(args) if args.mode == "job" else mode_inner(args)


if __name__ == "__main__":
    main()
