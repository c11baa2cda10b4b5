"""Joining the other processes of a multi-host run, and ending all of them when one fails.

A process that stops with an error (a refused work dir on process 0, a bad record, a bug)
would otherwise leave the others waiting in their next collective until the coordination
service's heartbeat gives up (about 100 s), each then printing its own trace. Here the
failing process writes its one-line message to the coordination service's key-value store
and exits; a watcher thread on every process reads that key and ends its process with the
same line within about a second.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

import jax

FAILURE_KEY = "realign_jax/failure"
POLL_MS = 1000


def maybe_initialize_distributed() -> None:
    """Join the other processes of a multi-host run (TPU pod slice, SLURM, or an explicit
    coordinator: JAX_COORDINATOR_ADDRESS=host:port with JAX_NUM_PROCESSES and JAX_PROCESS_ID);
    a single process, or one already joined, does nothing. Once joined, a failure of any
    process ends this one (`watch_for_failures`)."""
    if jax.distributed.is_initialized():
        return
    multi = os.environ.get("JAX_COORDINATOR_ADDRESS") or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") \
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if not multi:
        return
    explicit = {key: int(os.environ[name]) for key, name in (("num_processes", "JAX_NUM_PROCESSES"),
                                                             ("process_id", "JAX_PROCESS_ID")) if name in os.environ}
    jax.distributed.initialize(**explicit)
    watch_for_failures()


def joined() -> bool:
    """Whether this process is one of several (jax.distributed is initialised)."""
    return jax.distributed.is_initialized()


def _client():
    from jax._src import distributed  # the coordination service's client: no public accessor yet

    return distributed.global_state.client


def watch_for_failures() -> None:
    """A daemon thread that ends this process, with the failing process's line, once any
    process has reported a failure. It is stopped at exit before the distributed runtime shuts
    down (atexit runs it first: it is registered after `jax.distributed.initialize`'s), since a
    thread still inside the client's call then aborts the process."""
    client = _client()
    me = jax.process_index()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                message = client.blocking_key_value_get(FAILURE_KEY, POLL_MS)
            except Exception:  # not set yet (a timeout)
                continue
            if not message.startswith(f"process {me}:"):
                print(f"error: {message}", file=sys.stderr, flush=True)
                os._exit(2)
            return

    thread = threading.Thread(target=watch, name="realign_jax-failure-watch", daemon=True)
    thread.start()

    def stop_watching() -> None:
        stop.set()
        thread.join(timeout=2 * POLL_MS / 1000)

    atexit.register(stop_watching)


def report_failure(message: str) -> bool:
    """Tell every process that this one failed with `message`; False when this run is a single
    process (nothing to tell)."""
    if not joined():
        return False
    try:
        _client().key_value_set(FAILURE_KEY, f"process {jax.process_index()}: {message}")
    except Exception:  # another process reported first: its line ends the run
        pass
    return True
