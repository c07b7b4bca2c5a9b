"""The processes of the test session's own local Ray (not another Ray running on the machine)."""

from __future__ import annotations

import psutil


def session_raylets() -> list[psutil.Process]:
    """The raylet(s) of this process's Ray session, found by the session folder on their command line."""
    import ray._private.worker as worker

    session = worker._global_node.get_session_dir_path()
    raylets = [p for p in psutil.process_iter(["cmdline"], ad_value=None)
               if (p.info["cmdline"] or [""])[0].endswith("/raylet") and session in " ".join(p.info["cmdline"])]
    assert raylets, "no raylet of the test session's Ray"
    return raylets
