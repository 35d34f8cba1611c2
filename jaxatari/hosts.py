"""Several processes, one run (multi-host): JAX's own multi-controller runtime.

Every process runs the same command plus ``--coordinator HOST:PORT --num-processes N
--process-id I``, or ``--distributed auto`` where ``jax.distributed.initialize`` finds the
cluster itself (SLURM, Open MPI, TPU pods). ``join`` connects the process to the group once,
at the edge, before any JAX computation; from then on ``jax.devices()`` is every process's
devices, ``devices.seed_placement`` splits the seeds over all of them (the seed-parallel
Podracer layout of Hessel et al. 2021, "Podracer architectures for scalable reinforcement
learning", over hosts) and each process runs its devices' share of the one program.

Process 0 alone writes the run directory (config, logs, plots, checkpoints); the others
compute, take part in every gather, and write nothing. Everything the host reads of the
state (scores, chunk statistics, checkpoints) is gathered with ``devices.to_host``, a
collective: every process calls it at the same point, and the writer then writes. Where a
process's decision could differ from the others' (a run directory only process 0 can see,
Ctrl+C arriving at one process), ``any_process`` makes it one decision for all.

On CPUs the collectives are gloo's (``jax_cpu_collectives_implementation``), so two
processes on 127.0.0.1 run the same program as two hosts (tests/test_hosts.py).
"""
from __future__ import annotations

import dataclasses
import re
import socket
import time

from jaxatari.config import ConfigError

# How long a process waits for the coordinator, and the coordinator for every process to
# join (JAX's own default for ``initialization_timeout``).
DEFAULT_TIMEOUT = 300
AUTO = "auto"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """How this process joins a multi-process run: ``coordinator`` (HOST:PORT, served by
    process 0), ``num_processes`` and ``process_id``; or all three None with ``auto``,
    where JAX detects them from the cluster's environment. ``timeout``: seconds to wait
    for the coordinator and for the group to assemble."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    timeout: int = DEFAULT_TIMEOUT


def _count(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.strip().lstrip("-").isdigit()):
        raise ConfigError(f"{flag} must be a whole number, got {text!r}")
    return int(text)


def process_group(coordinator: str | None = None, num_processes: str | None = None,
                  process_id: str | None = None, distributed: str | None = None,
                  timeout: str | None = None) -> ProcessGroup | None:
    """The group the command-line options describe, or None for a one-process run;
    ConfigError (one line) for options that cannot describe one. No JAX here."""
    count = _count("--num-processes", num_processes)
    index = _count("--process-id", process_id)
    seconds = _count("--coordinator-timeout", timeout)
    explicit = {"--coordinator": coordinator, "--num-processes": count,
                "--process-id": index}
    given = [flag for flag, value in explicit.items() if value is not None]
    if distributed is not None and distributed != AUTO:
        raise ConfigError(f"--distributed takes only {AUTO} (JAX detects the cluster), got "
                          f"{distributed!r}; or give --coordinator, --num-processes and "
                          "--process-id yourself")
    if seconds is not None and seconds < 1:
        raise ConfigError(f"--coordinator-timeout must be at least 1 second, got {seconds}")
    if distributed == AUTO:
        if given:
            raise ConfigError(f"--distributed auto detects the cluster itself: leave out "
                              f"{', '.join(given)} (or leave out --distributed)")
        return ProcessGroup(auto=True, timeout=seconds or DEFAULT_TIMEOUT)
    if not given:
        if seconds is not None:
            raise ConfigError("--coordinator-timeout is for a multi-process run: give "
                              "--coordinator, --num-processes and --process-id too")
        return None
    missing = [flag for flag, value in explicit.items() if value is None]
    if missing:
        raise ConfigError(f"a multi-process run needs --coordinator HOST:PORT, "
                          f"--num-processes N and --process-id I together; missing "
                          f"{', '.join(missing)}")
    if count < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {count}")
    if not 0 <= index < count:
        raise ConfigError(f"--process-id must be in [0, {count}) for --num-processes "
                          f"{count}, got {index}")
    match = _HOST_PORT.match(coordinator.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ConfigError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234, with a port "
                          f"in 1-65535), got {coordinator!r}")
    return ProcessGroup(coordinator=coordinator.strip(), num_processes=count,
                        process_id=index, timeout=seconds or DEFAULT_TIMEOUT)


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """ConfigError unless something accepts connections at ``address`` within ``timeout``.
    Checked by this module, not left to JAX, whose client aborts the whole process (a
    C++ stack trace, exit 134) when the coordinator never answers."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    reason = "no answer"
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as error:
            reason = error.strerror or type(error).__name__
        if time.monotonic() >= deadline:
            raise ConfigError(f"--coordinator {address} did not answer within "
                              f"{timeout:g} s ({reason}): start process 0 there, or check "
                              "the address (--coordinator-timeout sets the wait)")
        time.sleep(0.2)


def join(group: ProcessGroup | None) -> None:
    """Connects this process to ``group`` (``jax.distributed.initialize``), once, before
    anything touches a JAX device; nothing for a one-process run. ConfigError (one line)
    when the coordinator does not answer within the group's timeout or ``auto`` finds no
    cluster. A group that never assembles (a process that never starts) ends every
    process that did with JAX's own error after the timeout."""
    if group is None:
        return
    import jax
    # CPUs exchange through gloo (JAX's CPU default has no cross-process collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if group.auto:
        try:
            jax.distributed.initialize(initialization_timeout=group.timeout)
        except (ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
            raise ConfigError(f"--distributed auto found no cluster to join (SLURM, Open MPI, "
                              f"a TPU pod; JAX says: {first}): give --coordinator, "
                              "--num-processes and --process-id instead") from None
        return
    started = time.monotonic()
    if group.process_id != 0:   # process 0 serves the coordinator itself
        _wait_for_coordinator(group.coordinator, group.timeout)
    remaining = max(int(group.timeout - (time.monotonic() - started)), 1)
    jax.distributed.initialize(group.coordinator, group.num_processes, group.process_id,
                               initialization_timeout=remaining)


def process_count() -> int:
    import jax
    return jax.process_count()


def writes_files() -> bool:
    """Whether this process writes the run's files: process 0 of a group, or the only one."""
    import jax
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process of the run (every process calls this at the
    same point); ``flag`` itself in a one-process run."""
    import jax
    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))
