"""The whole pipeline: synthetic corpus → crop → pretrain → finetune → label (+ report).

With ``--sweep-trials N`` a Ray Tune sweep of fine-tuning (``tune/sweep_finetune.py``: margins and learning
rate, N trials) runs before the finetune stage, and the finetune stage trains the final model with the winning
trial's values (the sweep's ``best.yaml``, overridden only by the pipeline's own flags).

Each stage is one ``jobs/<stage>.py`` command line. ``run_pipeline`` either runs those command lines in
this process on an embedded local Ray (``make demo``), or submits each as a Ray job (Ray's job client, as
``ray job submit`` does) to the cluster that ``RAY_ADDRESS`` names (``--submit``; ``cluster/run_pipeline.sh``),
waiting for each before the next. The same argument lists serve both, so the demo exercises exactly what a cluster runs.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid.core import config, console
from reid.core.data.synthetic.config import PRESETS
from reid.core.errors import ConfigError, ReidError

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
_POLL_S = 0.5  # how often a submitted stage's status and log are read when its log stream broke
STAGES = ("corpus", "crop", "pretrain", "finetune", "label")
RECIPES = {"default": {}, "paper": {"pretrain": "jobs/configs/paper_pretrain.yaml",
                                    "finetune": "jobs/configs/paper_finetune.yaml"}}


@dataclass(frozen=True)
class PipelineConfig:
    """Run every stage end to end on a synthetic COMICS-format corpus (demo-sized model by default)."""

    out: str = field(default="runs/demo", metadata={"help": "everything goes under this folder"})
    preset: str = field(default="demo", metadata={"help": "synthetic corpus preset: tiny | demo | bench | "
                                                          "inked-demo | inked (black-and-white line art)"})
    series: int | None = field(default=None, metadata={"help": "override the preset's number of series"})
    pages: int | None = field(default=None, metadata={"help": "override the preset's pages per series"})
    seed: int = field(default=0, metadata={"help": "seed of the synthetic corpus"})
    train_seed: int = field(default=0, metadata={"help": "seed of model initialisation and data order"})
    arch: str = field(default="resnet18", metadata={"help": "demo backbone (the paper: resnet50)"})
    face_size: int = field(default=48, metadata={"help": "demo face size (the paper: 96)"})
    body_size: int = field(default=64, metadata={"help": "demo body size (the paper: 128)"})
    recipe: str = field(default="default", metadata={"help": "default | paper: the paper's recipe (SimCLR colour "
                                                            "augmentations, frozen SSL network; "
                                                            "jobs/configs/paper_*.yaml)"})
    pretrain_epochs: int = 6
    batch_size: int = 64
    finetune_epochs: int = 15
    sequences_per_batch: int = 8
    workers: int = 2
    cpus_per_worker: float = 0.5
    data_cpus: float = 0.5
    gpu: bool = False
    stages: str = field(default=",".join(STAGES), metadata={"help": "comma-separated subset of " + ",".join(STAGES)})
    submit: bool = field(default=False, metadata={"help": "submit each stage as a Ray job to "
                                                          "$RAY_ADDRESS instead of running it here"})
    ray_address: str | None = field(default=None, metadata={"help": "with --submit: job server address "
                                                                   "(default: $RAY_ADDRESS)"})
    ray_num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the embedded local Ray"})
    mlflow_uri: str | None = field(default=None, metadata={"help": "default: sqlite:///<out>/mlflow.db, or the "
                                                                  "cluster's MLFLOW_TRACKING_URI with --submit"})
    name_prefix: str = field(default="demo", metadata={"help": "prefix of the Train run names / MLflow run keys"})
    sweep_trials: int = field(default=0, metadata={
        "help": "before fine-tuning, sweep its margins and learning rate with this many trials and fine-tune "
                "with the best (0 = no sweep)"})
    sweep_search: str = field(default="optuna", metadata={"help": "the sweep's searcher: optuna | random"})

    def __post_init__(self) -> None:
        unknown = set(self.stage_list) - set(STAGES)
        config.check(not unknown, f"unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
        config.check(self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}: {self.preset}")
        config.check(self.recipe in RECIPES, f"recipe must be one of {sorted(RECIPES)}: {self.recipe}")
        config.check(self.sweep_trials >= 0, f"sweep_trials must be >= 0, got {self.sweep_trials}")
        config.check(self.sweep_trials == 0 or "finetune" in self.stage_list,
                     "--sweep-trials tunes the finetune stage: add finetune to --stages")

    @property
    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]

    @property
    def run_order(self) -> list[str]:
        """The stages to run, with the fine-tuning sweep before fine-tuning when there is one."""
        order = []
        for stage in self.stage_list:
            order += ["sweep", stage] if stage == "finetune" and self.sweep_trials else [stage]
        return order


def paths(cfg: PipelineConfig) -> dict[str, str]:
    out = os.path.abspath(cfg.out)
    return {"out": out, "corpus": f"{out}/corpus", "crops": f"{out}/crops", "train": f"{out}/train",
            "labels": f"{out}/labels", "mlflow_db": f"{out}/mlflow.db",
            "ssl_model": f"{out}/train/{cfg.name_prefix}-pretrain/final/model.pt",
            "reid_model": f"{out}/train/{cfg.name_prefix}-finetune/final/model.pt",
            "sweep_best": f"{out}/train/{cfg.name_prefix}-finetune-sweep/best.yaml"}


def stage_commands(cfg: PipelineConfig) -> dict[str, list[str]]:
    """The command line (after ``python``) of every stage."""
    p = paths(cfg)
    common = ["--ray-num-cpus", str(cfg.ray_num_cpus)] if cfg.ray_num_cpus and not cfg.submit else []
    mlflow = ["--mlflow-uri", cfg.mlflow_uri] if cfg.mlflow_uri else []
    model = ["--face-size", str(cfg.face_size), "--body-size", str(cfg.body_size)]
    recipe = {stage: ["--config", path if cfg.submit else str(REPO / path)]  # --submit: relative to --working-dir
              for stage, path in RECIPES[cfg.recipe].items()}
    train = ["--workers", str(cfg.workers), "--cpus-per-worker", str(cfg.cpus_per_worker),
             "--data-cpus", str(cfg.data_cpus), "--storage", p["train"], "--seed", str(cfg.train_seed),
             *(["--gpu"] if cfg.gpu else [])]
    corpus = ["-m", "reid.core.data.synthetic", "--out", p["corpus"], "--preset", cfg.preset, "--seed", str(cfg.seed)]
    corpus += ["--series", str(cfg.series)] if cfg.series else []
    corpus += ["--pages", str(cfg.pages)] if cfg.pages else []
    finetune_inputs = ["--crops", p["crops"], "--sequences", f"{p['corpus']}/data/comics_seq", "--ssl-checkpoint",
                       p["ssl_model"], *model, "--epochs", str(cfg.finetune_epochs), "--sequences-per-batch",
                       str(cfg.sequences_per_batch)]
    return {
        "corpus": corpus,
        "crop": ["jobs/crop.py", "--comics-root", p["corpus"], "--out", p["crops"], "--pages-per-shard", "4",
                 "--name", f"{cfg.name_prefix}-crop", *mlflow, *common],
        "pretrain": ["jobs/pretrain.py", *recipe.get("pretrain", []), "--crops", p["crops"], "--name", f"{cfg.name_prefix}-pretrain",
                     "--arch", cfg.arch, *model, "--epochs", str(cfg.pretrain_epochs), "--batch-size",
                     str(cfg.batch_size), *train, *mlflow, *common],
        "sweep": ["tune/sweep_finetune.py", *recipe.get("finetune", []), *finetune_inputs, "--name",
                  f"{cfg.name_prefix}-finetune-sweep", "--samples", str(cfg.sweep_trials), "--search",
                  cfg.sweep_search, "--search-seed", str(cfg.train_seed), *train, *mlflow, *common],
        # the sweep's best.yaml first: its searched values stay, the pipeline's flags override the rest
        "finetune": ["jobs/finetune.py", *(["--config", p["sweep_best"]] if cfg.sweep_trials else
                                           recipe.get("finetune", [])), *finetune_inputs,
                     "--name", f"{cfg.name_prefix}-finetune",
                     *([] if RECIPES[cfg.recipe] else ["--val-every", "3"]),  # the last epoch's model is kept
                     *train, *mlflow, *common],
        "label": ["jobs/label.py", "--model", p["reid_model"], "--crops", p["crops"], "--out", p["labels"],
                  "--comics-root", p["corpus"], "--ground-truth", f"{p['corpus']}/ground_truth.csv",
                  "--name", f"{cfg.name_prefix}-label", *mlflow, *common],
    }


def _run_here(stage: str, argv: list[str]) -> None:
    """Run one stage's command line in this process (embedded Ray), exactly as its job script would."""
    import runpy

    if argv[0] == "-m":
        module, args = argv[1], argv[2:]
        saved = sys.argv
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__")
        finally:
            sys.argv = saved
        return
    script = REPO / argv[0]
    namespace = runpy.run_path(str(script), run_name=f"reid_job_{stage}")
    namespace["main"](argv[1:])


def _submit(stage: str, argv: list[str], cfg: PipelineConfig) -> None:
    """Submit one stage to the cluster through Ray's job client, print its log as it runs, and return only when
    it succeeded (a job stopped from elsewhere or failed stops the pipeline)."""
    from ray.job_submission import JobStatus

    from reid.runtime.raycluster import job_client

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("--submit needs a cluster: set RAY_ADDRESS (e.g. `source runs/local-cluster/env`) "
                          "or pass --ray-address")
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # the client adds the cluster's token (RAY_AUTH_TOKEN_PATH)
    client = job_client(cfg.ray_address)  # --ray-address, else the cluster the environment names
    submission_id = f"{cfg.name_prefix}-{stage}-{int(time.time())}"
    log.info("submitting %s as %s: %s", stage, submission_id, shlex.join([sys.executable, *argv]))
    client.submit_job(entrypoint=shlex.join([sys.executable, *argv]), submission_id=submission_id,
                      runtime_env={"working_dir": str(REPO)})
    try:
        status = _follow(client, submission_id)
    except KeyboardInterrupt:
        log.warning("stage %s keeps running on the cluster as job %s (stop it with `ray job stop %s`)", stage,
                    submission_id, submission_id)
        raise
    if status != JobStatus.SUCCEEDED:
        message = client.get_job_info(submission_id).message or ""
        raise ReidError(f"stage {stage} did not succeed: job {submission_id} {status.value}"
                        f"{f' ({message.strip()[:300]})' if message else ''}; see `ray job logs {submission_id}`")


def _follow(client: Any, submission_id: str) -> Any:
    """Print a submitted job's log as the driver writes it (the job server's log stream, as `ray job submit`
    follows it) and return its final status. If the stream breaks (a dashboard restart), the rest of the log is
    polled."""
    import asyncio

    printed = 0

    async def tail() -> None:
        nonlocal printed
        async for chunk in client.tail_job_logs(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
            printed += len(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the stream closed abnormally: poll instead
        log.warning("lost the log stream of job %s (%s); polling it", submission_id, str(exc)[:200])
    while True:  # the stream ends with the job; its status may turn terminal a moment later
        status = client.get_job_status(submission_id)
        logs = client.get_job_logs(submission_id)
        sys.stdout.write(logs[printed:])
        sys.stdout.flush()
        printed = max(printed, len(logs))
        if status.is_terminal():
            return status
        time.sleep(_POLL_S)


def run_pipeline(cfg: PipelineConfig) -> dict[str, str]:
    """Run the selected stages in order; returns the paths of the outputs."""
    p = paths(cfg)
    os.makedirs(p["out"], exist_ok=True)
    if not cfg.mlflow_uri and not cfg.submit:
        cfg = config.replace(cfg, mlflow_uri=f"sqlite:///{p['mlflow_db']}")
    commands = stage_commands(cfg)
    log.info("pipeline: stages %s → %s (log: %s)", ", ".join(cfg.stage_list), p["out"], console.open_log())
    for stage in cfg.run_order:
        if stage == "corpus" and os.path.exists(f"{p['corpus']}/summary.json"):
            log.info("=== stage corpus: %s exists (generation is deterministic), skipping", p["corpus"])
            continue
        start = time.time()
        log.info("=== stage %s", stage)
        if cfg.submit:
            _submit(stage, commands[stage], cfg)
        else:
            _run_here(stage, commands[stage])
        log.info("=== stage %s done in %.0f s", stage, time.time() - start)
    return p
