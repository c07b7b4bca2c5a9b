"""Run the review app: a uvicorn server on a socket bound before it starts (so the URL is known), a one-line
console status, and a background variant for tests and the review simulator."""

from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from reid.core.contracts.crops import crops_output
from reid.core.errors import DataFormatError
from reid.stages.review.app import create_app, new_token
from reid.stages.review.config import ReviewConfig
from reid.stages.review.corpus import ReviewCorpus
from reid.stages.review.media import CropCache, comics_root_of


@dataclass
class RunningApp:
    """A started server: its URL (with the token), the corpus it serves, and how to stop it."""

    url: str
    base: str
    token: str
    corpus: ReviewCorpus
    crops: CropCache
    server: Any
    thread: threading.Thread | None = None

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog from now on, before the server's loop accepts them
    sock.set_inheritable(True)
    return sock


def _status(corpus: ReviewCorpus) -> str:
    state = corpus.state
    return (f"\rreview: {len({s for s, _ in state.ids})} books, {len(state.ids)} identities, "
            f"{state.applied} actions, {len(state.touched & set(state.ids))} reviewed identities   ")


def build(cfg: ReviewConfig, quiet: bool = False) -> RunningApp:
    """Load the corpus, bind the socket and make the server (not started yet)."""
    import uvicorn

    if not crops_output(cfg.crops).is_complete():
        raise DataFormatError(cfg.crops, "crop output is incomplete or missing (no _SUCCESS): give the --crops "
                                         "folder of jobs/crop.py the labels were made from")
    corpus = ReviewCorpus(cfg.labels, cfg.db)
    crops = CropCache(cfg.crops, corpus.instance_shard, cfg.crop_cache_shards)
    token = cfg.token or new_token()

    def on_action(_: dict[str, Any]) -> None:
        if not quiet:
            sys.stdout.write(_status(corpus))
            sys.stdout.flush()

    app = create_app(corpus, crops, comics_root_of(cfg.crops, cfg.comics_root), token, on_action)
    sock = _bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    running = RunningApp(f"{base}/?token={token}", base, token, corpus, crops, server)
    running.sock = sock  # type: ignore[attr-defined]
    return running


def serve(cfg: ReviewConfig) -> None:
    """Serve until Ctrl-C, printing the URL and keeping a one-line status."""
    running = build(cfg)
    print(f"review app: open {running.url}")
    print(f"review log: {running.corpus.db_path}")
    sys.stdout.write(_status(running.corpus))
    sys.stdout.flush()
    try:
        running.server.run(sockets=[running.sock])  # type: ignore[attr-defined]
    finally:
        print()


def start_in_background(cfg: ReviewConfig) -> RunningApp:
    """Start the app in a thread (tests, the review simulator); returns once it answers."""
    running = build(cfg, quiet=True)
    running.thread = threading.Thread(target=running.server.run,
                                      kwargs={"sockets": [running.sock]}, daemon=True)  # type: ignore[attr-defined]
    running.thread.start()
    deadline = time.time() + 30
    while not running.server.started:
        if time.time() > deadline or not running.thread.is_alive():
            raise RuntimeError("the review app did not start")
        time.sleep(0.02)
    return running
