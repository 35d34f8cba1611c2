"""Where a run's seeds live: ``--devices``, the device mesh and the seed axis's sharding
(seed-parallel, the simplest of the Podracer layouts: Hessel et al. 2021, "Podracer
architectures for scalable reinforcement learning").

Seeds never exchange anything, so S seeds on D devices are S / D seeds per device and no
communication: every array whose leading axis is the seed axis (parameters, optimiser
state, replay memory, env states, keys, per-seed counters) is split along that axis over
a one-dimensional mesh (axis ``seeds``), and what the seeds share (the replay memory's
write counters, which advance in lockstep) is replicated. The mesh is built once at the
edge (``loop.Trainer``) and the state placed on it once; the jitted chunk, evaluation and
held-out statistics follow their inputs' shardings, so XLA partitions the vmapped seed
axis and each device runs its seeds' share of the one program. ``--devices 1`` places
nothing: the single-device program as before.

On a machine without an accelerator JAX has one CPU device unless more are asked for
before its backend starts. ``request_cpu_devices`` asks, for ``--devices N`` (N > 1) or
``all``, for one CPU device per core at most (``jax_num_cpu_devices``); a count the user
forced with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is left as it is.

Host envs (Atari, gymnasium) split their seeds the same way: the loop's state [S, ...]
is placed on the mesh once, its jitted functions keep their outputs split
(``keep_split``), and each step's host arrays [S, E, ...] go onto the mesh with the seed
split (``put``); the envs stay one pool on the host (``loops.q_host``, and
``loops.actors.run_host_sync`` for the actor-learners). Not data-parallel seeds, and not
the asynchronous actor-learner loop (``host_devices_problem``).

Acting, envs, replay, keys and evaluation give the one-device run's numbers bit for bit
(tests/test_devices.py). Updates do not: XLA's CPU code for them rounds a seed's numbers
differently depending on how many seeds share a device (seeds 0-1 of a 4-seed chunk differ
in the last bits from the same two seeds run alone, on one device too), and learning
amplifies the difference (docs/devices.md).

More devices than seeds (``--devices N`` a multiple of ``--seeds S``) makes each seed
data-parallel over D = N / S devices (Anakin, the Podracer paper's data-parallel learner;
``agents.data_parallel``): a two-dimensional mesh (``seeds``, ``batch``) of S x D devices,
one device per (seed, share). The run's state then leads with S x D entries, seed-major:
entry s D + d is seed s's share on device d (its E / D envs, its replay rows, its frame
stacks and acting key; the seed's parameters, optimiser state and learner key, alike on
its D devices), split one entry per device (``place(..., shards=True)``). The chunk runs
inside ``shard_map`` (``data_parallel``), where the learner adds its gradients over
``batch``.

A multi-process run (``jaxatari.hosts``) splits the seeds over every process's devices:
``--devices`` counts each process's own, the mesh holds all of them, and each process
supplies its devices' shares of a new state (``place``) and gathers what the host reads
(``to_host``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxatari.agents.data_parallel import BATCH_AXIS, shard_over_batch
from jaxatari.config import Config, ConfigError, data_parallel_problem, sebulba

SEED_AXIS = "seeds"
ALL_DEVICES = "all"
FORCED_CPU_DEVICES = "--xla_force_host_platform_device_count"


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def request_cpu_devices(config: Config) -> None:
    """Asks JAX for one CPU device per core, at most the ``--devices`` (or Sebulba's
    ``--actor-devices`` + ``--learner-devices``) asked for, when more than one is asked
    for; call it before anything touches a JAX device. Once the backend
    has started (a library caller's earlier JAX work), or where the user chose the count
    (``XLA_FLAGS`` or ``jax_num_cpu_devices``), it changes nothing and ``seed_placement``
    reports the devices there are. On a machine with an accelerator the extra CPU devices
    are only created, never used."""
    wanted = (str(config.actor_devices + config.learner_devices) if sebulba(config)
              else config.devices)
    if wanted == "1":
        return
    if FORCED_CPU_DEVICES in os.environ.get("XLA_FLAGS", ""):
        return
    if jax.config.jax_num_cpu_devices >= 0:   # set by the user's program
        return
    cores = cpu_cores()
    count = cores if wanted == ALL_DEVICES else min(int(wanted), cores)
    if count > 1:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:   # the backend has started: its devices are what there is
            pass


def _more_devices_hint(platform: str, flag: str = "--devices") -> str:
    if platform != "cpu":
        return ""
    if FORCED_CPU_DEVICES in os.environ.get("XLA_FLAGS", ""):
        return f"; XLA_FLAGS={FORCED_CPU_DEVICES}=N sets how many CPU devices there are"
    return (f"; on a CPU, {flag} makes at most one device per core ({cpu_cores()} here); "
            f"for more, start the run with XLA_FLAGS={FORCED_CPU_DEVICES}=N")


@dataclasses.dataclass(frozen=True)
class SeedPlacement:
    """The devices a run's seeds are split over: ``mesh`` (axis ``seeds``), or None for one
    device, where nothing is placed and the program is the single-device one. ``shards``
    above 1: each seed data-parallel over that many devices, the mesh's second axis
    (``batch``)."""

    mesh: Mesh | None = None
    shards: int = 1

    @property
    def device_count(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size

    @property
    def split_axes(self) -> tuple[str, ...]:
        """The mesh axes a per-share leading axis (S x D entries) is split over."""
        return (SEED_AXIS, BATCH_AXIS) if self.shards > 1 else (SEED_AXIS,)

    def specs(self, seed_axes: Any) -> Any:
        """PartitionSpecs of a data-parallel state (leading axis S x D) from its vmap axes:
        0 split one entry per device, None replicated."""
        return jax.tree.map(lambda axis: PartitionSpec() if axis is None
                            else PartitionSpec(self.split_axes), seed_axes,
                            is_leaf=lambda axis: axis is None)

    def place(self, tree: Any, seed_axes: Any = 0, *, after_configurations: bool = False,
              shards: bool = False) -> Any:
        """``tree`` on the mesh: leaves whose seed axis is 0 split over the devices, leaves
        whose axis is None in ``seed_axes`` (a prefix of ``tree``, as vmap's axes) shared
        by the seeds and replicated. ``after_configurations``: a sweep's state, whose seed
        axis follows its configuration axis (kept whole on every device: each device runs
        every configuration of its seeds). ``shards``: a data-parallel state, whose leading
        axis holds every seed's share on every device (S x D), one per device; otherwise a
        data-parallel run's [S] leaves go to their seed's devices, replicated on them.
        Without a mesh, ``tree`` as it is."""
        if self.mesh is None:
            return tree
        split = NamedSharding(self.mesh, PartitionSpec(None, SEED_AXIS) if after_configurations
                              else PartitionSpec(self.split_axes if shards else SEED_AXIS))
        shardings = self._shardings(seed_axes, split)
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)
        # Several processes: a leaf that is already global is resharded; one this process
        # holds whole (made alike by every process: a new key, a restored checkpoint) gives
        # each of its devices that device's share. No process may place on another's.
        shardings = jax.tree.broadcast(shardings, tree)
        return jax.tree.map(_place_global, tree, shardings)

    def _shardings(self, seed_axes: Any, split: NamedSharding) -> Any:
        shared = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda axis: shared if axis is None else split, seed_axes,
                            is_leaf=lambda axis: axis is None)

    def put(self, tree: Any) -> Any:
        """Host arrays [S, ...] (a host env pool's observations, a step's numbers) on the
        devices: split over the mesh along the seed axis as ``place`` splits the state, or
        on the default device without a mesh."""
        return jax.device_put(tree) if self.mesh is None else self.place(tree)

    def keep_split(self, out_axes: Any = 0) -> dict[str, Any]:
        """``jax.jit`` keywords that keep a seed-vmapped function's outputs where ``place``
        puts the state (``out_axes`` as vmap's: 0 split over the mesh, None replicated), so
        a host loop's state stays split from call to call: ``{"out_shardings": ...}``, or
        nothing without a mesh. Seed-parallel runs only (one device per seed share)."""
        if self.mesh is None:
            return {}
        return {"out_shardings": self._shardings(out_axes, self.seed_sharding)}

    @property
    def seed_sharding(self) -> NamedSharding | None:
        """Where an array [S, ...] of a seed-parallel run lives: split over the mesh along
        its seed axis; None without a mesh."""
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec(SEED_AXIS))

    def share_keys(self, keys: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """(keys, shards) of a state's leading axis from the seeds' keys [S]: ``keys`` and
        None, or with data-parallel seeds each seed's key once per device [S x D] and
        which share of its seed each entry is (``agents.native.init_native_carry``)."""
        if self.shards == 1:
            return keys, None
        seeds = keys.shape[0]
        return (jnp.repeat(jax.device_get(keys), self.shards, axis=0),
                jnp.tile(jnp.arange(self.shards, dtype=jnp.int32), seeds))

    def data_parallel(self, fn, in_specs, out_specs):
        """``fn`` on every device of the mesh with its share (``shard_map``): a
        data-parallel run's chunk, whose learner adds its gradients over ``batch``."""
        return shard_over_batch(fn, self.mesh, in_specs, out_specs)


def _place_global(leaf, sharding):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_place_global(jax.random.key_data(leaf), sharding),
                                        impl=jax.random.key_impl(leaf))
    whole = np.asarray(leaf)
    return jax.make_array_from_callback(whole.shape, sharding, lambda index: whole[index])


def to_host(tree: Any) -> Any:
    """``tree`` as numpy arrays on this host, whole. In a multi-process run a leaf spread
    over the processes is gathered (``process_allgather``, a collective: every process
    calls this at the same point); elsewhere it is ``jax.device_get``."""
    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return jax.device_get(leaf)
    return jax.tree.map(fetch, tree)


def seed_placement(config: Config, *, native: bool) -> SeedPlacement:
    """The run's placement from ``--devices``: ConfigError (one line) for more devices than
    exist, a --seeds they do not divide, or what a host env cannot split
    (``host_devices_problem``). Touches the backend: call ``request_cpu_devices`` before
    it."""
    processes = jax.process_count()
    if config.devices == "1" and processes == 1:
        return SeedPlacement()
    devices = jax.local_devices()
    platform = devices[0].platform
    count = len(devices) if config.devices == ALL_DEVICES else int(config.devices)
    if processes > 1 and not native:
        raise ConfigError(f"a multi-process run ({processes} processes) splits seeds over "
                          "devices, which is for JAX-native envs only (catch, gridworld, "
                          "MinAtar) so far; host envs (Atari, gymnasium) run in one process")
    if count > 1 and not native:
        problem = host_devices_problem(config, count)
        if problem:
            raise ConfigError(problem)
    if count > len(devices):
        exist = (f"{len(devices)} {platform} device exists" if len(devices) == 1 else
                 f"{len(devices)} {platform} devices exist")
        raise ConfigError(f"--devices {count}: only {exist} here"
                          f"{_more_devices_hint(platform)}")
    if processes > 1:
        return _global_placement(config, count, processes)
    if count > config.seeds:   # data-parallel seeds (--devices all; a number is checked early)
        problem = data_parallel_problem(config, count)
        if problem:
            raise ConfigError(problem)
        shards = count // config.seeds
        return SeedPlacement(Mesh(np.asarray(devices[:count]).reshape(config.seeds, shards),
                                  (SEED_AXIS, BATCH_AXIS)), shards=shards)
    if config.seeds % count:
        raise ConfigError(f"--seeds {config.seeds} does not divide over --devices "
                          f"{config.devices} ({count} devices): choose a --seeds that is a "
                          "multiple of the device count (seeds are not padded)")
    if count == 1:
        return SeedPlacement()
    return SeedPlacement(Mesh(np.asarray(devices[:count]), (SEED_AXIS,)))


def host_devices_problem(config: Config, count: int) -> str | None:
    """Why a host env's run (Atari, gymnasium) cannot split its seeds over ``count``
    devices, or None. Its seeds split as a JAX-native env's do, in the Q agent's host loop
    and the actor-learners' synchronous one; not data-parallel (more devices than seeds)
    and not the asynchronous loop, whose seeds each act and learn on their own."""
    asked = f"--devices {config.devices}"
    if count > config.seeds:
        return (f"{asked} with --seeds {config.seeds}: more devices than seeds (each seed "
                "data-parallel over several) is for JAX-native envs only (catch, gridworld, "
                "MinAtar) so far; host envs (Atari, gymnasium) split their seeds: choose "
                "--devices that divides --seeds")
    if config.async_method != "none" and config.async_mode == "async":
        return (f"{asked} with --async-mode async: the asynchronous host loop runs on one "
                "device so far; use --async-mode sync to split the seeds, or --devices 1")
    return None


def _global_placement(config: Config, count: int, processes: int) -> SeedPlacement:
    """The mesh of a multi-process run: the first ``count`` devices of every process, in
    process order (process 0's devices hold the first seeds)."""
    total = count * processes
    if config.seeds % total:
        raise ConfigError(f"--seeds {config.seeds} does not divide over {total} devices "
                          f"(--devices {config.devices} in each of {processes} processes): "
                          "choose a --seeds that is a multiple of the device count (seeds "
                          "are not padded)")
    devices = [device for process in range(processes)
               for device in sorted((d for d in jax.devices() if d.process_index == process),
                                    key=lambda d: d.id)[:count]]
    return SeedPlacement(Mesh(np.asarray(devices), (SEED_AXIS,)))


# ----------------------------------------------------------------------------- Sebulba

LEARNER_AXIS = BATCH_AXIS   # Sebulba's learner mesh: the axis a minibatch is split on


@dataclasses.dataclass(frozen=True)
class SebulbaPlacement:
    """Sebulba's devices (Hessel et al. 2021, "Podracer architectures", section 3.2; Huang
    et al. 2023's Cleanba is it with envpool): host envs stepped by one actor thread per
    actor device, acting there with a copy of the parameters, while the learner updates on
    ``learner_mesh`` (axis ``batch``), data-parallel: each minibatch split over its devices
    (``batch_layout``), parameters, optimiser state and replay memory replicated, and the
    gradient summed over the devices by the all-reduce XLA inserts (GSPMD).

    The actor and learner devices are disjoint in a run (the first --actor-devices local
    devices act, the next --learner-devices learn); a test may share one device between
    both roles, which the loop allows."""

    actor_devices: tuple
    learner_mesh: Mesh

    @property
    def learner_devices(self) -> tuple:
        return tuple(self.learner_mesh.devices.flat)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.learner_mesh, PartitionSpec())

    def on_learner(self, tree: Any) -> Any:
        """``tree`` whole on every learner device."""
        return jax.device_put(tree, self.replicated)

    def batch_layout(self, batch_axis: int):
        """The agent's ``place_batch`` (``agents.dqn.make_q_agent``): a sampled minibatch
        split over the learner devices along ``batch_axis`` (0 for transitions, 1 for the
        time-major sequences of a recurrent agent), its importance weights [B] alike."""
        mesh = self.learner_mesh

        def split(axis: int):
            return NamedSharding(mesh, PartitionSpec(*([None] * axis), LEARNER_AXIS))

        def place_batch(batch, weights):
            batch = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, split(batch_axis)),
                                 batch)
            return batch, jax.lax.with_sharding_constraint(weights, split(0))
        return place_batch


def sebulba_placement(config: Config, *, native: bool) -> SebulbaPlacement | None:
    """The run's Sebulba devices from --actor-devices and --learner-devices, or None where
    both are 1 (the one-device loop). ConfigError (one line) for a JAX-native env, a
    multi-process run or more devices than exist. Touches the backend: call
    ``request_cpu_devices`` before it."""
    if not sebulba(config):
        return None
    asked = (f"--actor-devices {config.actor_devices} and --learner-devices "
             f"{config.learner_devices}")
    if native:
        raise ConfigError(f"{asked} (Sebulba) are for host envs (Atari, gymnasium), whose "
                          "envs step on the host; JAX-native envs (catch, gridworld, MinAtar) "
                          "step inside the jitted program: split their seeds with --devices")
    if jax.process_count() > 1:
        raise ConfigError(f"{asked} (Sebulba) run in one process; a multi-process run is for "
                          "JAX-native envs only so far")
    devices = jax.local_devices()
    platform = devices[0].platform
    needed = config.actor_devices + config.learner_devices
    if needed > len(devices):
        exist = (f"{len(devices)} {platform} device exists" if len(devices) == 1 else
                 f"{len(devices)} {platform} devices exist")
        raise ConfigError(f"{asked} need {needed} devices: only {exist} here"
                          f"{_more_devices_hint(platform, 'Sebulba')}")
    actors = tuple(devices[:config.actor_devices])
    learners = np.asarray(devices[config.actor_devices:needed])
    return SebulbaPlacement(actor_devices=actors, learner_mesh=Mesh(learners, (LEARNER_AXIS,)))
