"""How many connections the daemon holds: per client and in total, within its descriptor limit.

Each client connection is a descriptor and a thread of the daemon. Without a bound, one
client (an allowed one, or one the allow-list refuses while it keeps its connections busy)
opened connections until the daemon ran out of descriptors: at a login session's usual
1,024 it could accept nobody else, and every other user's append failed (their records
waited in their spools). Now a client is a uid (Unix socket), a certificate subject (TLS,
after the handshake) or a host (TLS, before it). Past ``per_client`` connections of one
client, or ``total`` of all, a connection is answered ``unavailable`` with the reason and
closed at once, without a thread; the operator's log names the client, once a minute.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import socket
import threading
import time

from ._wire import encode, send_frame

__all__ = ["PER_CLIENT", "TOTAL", "Admission", "fit_descriptors", "turn_away"]

log = logging.getLogger("lineage_ledger.baash")
PER_CLIENT = 256  # a workflow's concurrent steps of one user, each with its back-end object
TOTAL = 1024
LOG_EVERY = 60.0  # seconds between two log lines about one client's refused connections


def fit_descriptors(total: int, reserve: int) -> int:
    """Raise the soft descriptor limit toward the hard one so that ``total`` connections
    and ``reserve`` more (ranks' heartbeats, block files, mpiexec's pipes) fit; the number
    of connections that fit under the limit as it is then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = total + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft != resource.RLIM_INFINITY and soft - reserve < total:
        fits = max(8, soft - reserve)
        log.warning("baash: this process may open %d descriptors (ulimit -n); it takes %d client connections, "
                    "not %d", soft, fits, total)
        return fits
    return total


class Admission:
    """Connections held per client key and in total; refusals said to the client and logged."""

    def __init__(self, per_client: int = PER_CLIENT, total: int = TOTAL) -> None:
        self.per_client, self.total = per_client, total
        self.held: dict[str, int] = {}
        self.count = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[float, int]] = {}  # key -> (when last logged, refusals since)

    def admit(self, key: str) -> str | None:
        """None if ``key`` may hold one more connection (now counted), else why not."""
        with self._lock:
            mine = self.held.get(key, 0)
            if mine >= self.per_client:
                why = (f"this BAASH service already holds {mine} connections of {key}, the most one client may "
                       f"hold (--max-client-connections {self.per_client}); close some (each back-end object "
                       f"holds one) and try again")
            elif self.count >= self.total:
                why = (f"this BAASH service already holds {self.count} client connections, the most it takes "
                       f"(--max-connections {self.total}); try again later")
            else:
                self.held[key] = mine + 1
                self.count += 1
                return None
            self.refused += 1
            self.note(key, why)
            return why

    def release(self, key: str) -> None:
        with self._lock:
            left = self.held.get(key, 0) - 1
            if left > 0:
                self.held[key] = left
            else:
                self.held.pop(key, None)
            self.count -= 1

    def rekey(self, old: str, new: str) -> str | None:
        """Count a connection under ``new`` (its certificate, once the handshake told us)
        instead of ``old``; if ``new`` is over its cap, nothing stays counted."""
        self.release(old)
        return self.admit(new)

    def note(self, key: str, why: str, done: str = "refused") -> None:
        """Log what was ``done`` to a client's connections at most once a minute per client
        and kind (a flood must not fill the log)."""
        now = time.monotonic()
        last, since = self._logged.get(f"{done} {key}", (float("-inf"), 0))
        if now - last < LOG_EVERY:
            self._logged[f"{done} {key}"] = (last, since + 1)
            return
        self._logged[f"{done} {key}"] = (now, 0)
        more = f" ({since} more {done} since the last line)" if since else ""
        log.warning("baash: %s a connection from %s: %s%s", done, key, why, more)


def turn_away(sock: socket.socket, why: str) -> None:
    """Tell a client over its cap why, without a thread and without waiting: the answer fits
    the socket's buffer, and a Unix peer reads it even after we close."""
    try:
        sock.setblocking(False)
        send_frame(sock, encode("error", status="unavailable", message=why))
    except OSError:
        pass
    finally:
        sock.close()
