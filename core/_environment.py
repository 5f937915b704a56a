"""Where a task ran: host, user, Python, and the conda env or container where known."""

from __future__ import annotations

import functools
import getpass
import os
import platform
import socket
import sys
from typing import Any

__all__ = ["current_environment", "state_root"]


def _container() -> str | None:
    for variable in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if os.environ.get(variable):
            return f"apptainer:{os.environ[variable]}"
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry inside some containers
        return str(os.getuid())


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    environment: dict[str, Any] = {
        "host": socket.gethostname(),
        "user": _user(),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        environment["conda_env"] = conda
    container = _container()
    if container:
        environment["container"] = container
    return environment


def current_environment(**extra: Any) -> dict[str, Any]:
    """The environment of this process, plus engine-specific entries."""
    environment = dict(_static())
    environment.update({k: v for k, v in extra.items() if v is not None})
    return environment


def state_root() -> str:
    """``$LINEAGE_STATE_DIR``, else ``$XDG_STATE_HOME/lineage-ledger``, else ``~/.local/state/lineage-ledger``."""
    explicit = os.environ.get("LINEAGE_STATE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "lineage-ledger")
