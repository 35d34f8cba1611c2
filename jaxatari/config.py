"""Run configuration: one frozen, flat record of options, presets, overrides, validation.

The options keep the original Kaixhin/Atari names in kebab case on the command line
(``-memSize`` -> ``--mem-size``, ``-PALpha`` -> ``--pal-alpha``). A preset is a TOML file
in ``configs/`` listing the options it changes; command-line overrides are applied after
it, so later values win, as the original's run.sh. No JAX here.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


COLOR_SPACES = ("none", "y", "lab", "yuv", "hsl", "hsv", "nrgb")


class ConfigError(ValueError):
    """A user mistake in a preset or an option; the message is one line."""


def option(default, help: str, choices: tuple | None = None, group: str = "general",
           flag: str | None = None):
    """A config field; ``flag`` overrides the derived --kebab-case name (for --async)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices,
                                                        "group": group, "flag": flag})


@dataclasses.dataclass(frozen=True)
class Config:
    # Experiment
    preset: str = option("", "preset this run started from", group="experiment")
    seeds: int = option(1, "independent seeds trained side by side in one program (vmapped)", group="experiment")
    seed: int = option(1, "base random seed; seed i of a run uses seed + i", group="experiment")
    steps: int = option(50_000_000, "agent steps per seed (each step is --act-rep frames on Atari); at most 2^31-1", group="experiment")
    run_dir: str = option("", "where the run writes (default: runs/<preset>-<env>-<time>)", group="experiment")
    chunk_steps: int = option(10_000, "agent steps per seed between host syncs (logging, progress, checkpoints)", group="experiment")
    verbose: bool = option(False, "log every finished training episode's score", group="experiment")
    actor_devices: int = option(1, "Sebulba (host envs, replay agent): devices the actor threads act on, one thread per device stepping its own pool of --envs / N of every seed's envs; the first N local devices act and the next --learner-devices learn; 1 with --learner-devices 1 = the one-device loop", group="experiment")
    learner_devices: int = option(1, "Sebulba: devices the learner splits each minibatch over (data-parallel, gradients summed over them; parameters, optimiser state and replay memory replicated on each); must divide --batch-size", group="experiment")
    devices: str = option("1", "devices the seeds are split over, each training --seeds / N of them (JAX-native and host envs; not --async-mode async with host envs): N, or all = every local device; on a machine without an accelerator all = one CPU device per core (JAX's jax_num_cpu_devices, set before JAX starts), or the count in XLA_FLAGS=--xla_force_host_platform_device_count=N; N must divide --seeds, or be a multiple of it: then each seed is data-parallel over D = N / --seeds devices, each stepping --envs / D envs (Q agent: with its own replay rows, sampling --batch-size / D of the batch from them), gradients added over the D devices (D must divide --envs, and for the Q agent --batch-size; JAX-native envs only); in a multi-process run (--coordinator) each process's own devices, and N x processes must divide --seeds", group="experiment")

    # Environment
    env: str = option("catch", "catch | gridworld | <Game>-MinAtar | atari | a gymnasium id | package.module:Class", group="env")
    game: str = option("", "Atari game when --env atari (e.g. SpaceInvaders)", group="env")
    protocol: str = option("kaixhin", "Atari env protocol", ("kaixhin", "machado"), group="env")
    backend: str = option("envpool", "Atari backend", ("envpool", "ale"), group="env")
    envs: int = option(1, "environments per seed, stepped together", group="env")
    size: int = option(24, "Catch screen size", group="env")
    flickering: float = option(0.0, "Catch: probability that a screen is blanked", group="env")
    obscured: bool = option(False, "Catch: blank the rows above the paddle", group="env")

    # Model
    model_body: str = option("catch", "network body: catch | atari | nature | atari2013 | minatar | blog | mlp | package.module:Class", group="model")
    mlp_hidden: int = option(256, "width of the mlp body's hidden layer", group="model")
    hidden_size: int = option(512, "width of the fully connected layer of each head", group="model")
    hist_len: int = option(4, "frames stacked into one observation", group="model")
    duel: bool = option(True, "dueling heads (Wang et al. 2016)", group="model")
    bootstraps: int = option(10, "bootstrap heads (Osband et al. 2016); 0 = off", group="model")
    bootstrap_prob: float = option(0.5, "probability that a head trains on a transition", group="model")
    # Recurrent DQN (Hausknecht and Stone 2015): --hist-len becomes the sequence length.
    recurrent: bool = option(False, "LSTM of --hidden-size units instead of the fully connected layer (DRQN); one frame per step, --hist-len steps per replayed sequence", group="model")
    burn_in: int = option(0, "recurrent: steps before each replayed sequence that only warm the LSTM state, no loss (R2D2); 0 = zero state", group="model")
    loss_steps: str = option("last", "recurrent: steps of each sequence in the loss: last (the original's) or all", ("last", "all"), group="model")
    conv: str = option("auto", "how conv bodies convolve (same maths, different speed): auto = xla for host envs (Atari) with one seed, patch otherwise (inside the JAX-native scan and for vmapped seeds)", ("auto", "patch", "xla"), group="model")

    # Experience replay
    discretise_mem: bool = option(True, "store observations as bytes (reals in [0,1] -> 0..255)", group="replay")
    mem_size: int = option(1_000_000, "replay capacity in transitions per seed", group="replay")
    mem_sample_freq: int = option(4, "agent steps between learning updates", group="replay")
    mem_n_samples: int = option(1, "minibatches per learning update", group="replay")
    mem_priority: str = option("none", "prioritised replay", ("none", "rank", "proportional"), group="replay")
    alpha: float = option(0.65, "prioritised replay exponent", group="replay")
    beta_zero: float = option(0.45, "initial importance-sampling exponent, annealed to 1", group="replay")

    # Reinforcement learning
    gamma: float = option(0.99, "discount", group="rl")
    epsilon_start: float = option(1.0, "initial exploration rate", group="rl")
    epsilon_end: float = option(0.01, "final exploration rate", group="rl")
    epsilon_steps: int = option(1_000_000, "steps of linear epsilon decay after --learn-start", group="rl")
    tau: int = option(30_000, "steps between target network updates", group="rl")
    reward_clip: float = option(1.0, "clip rewards to +-this for learning (0 = off); scores stay raw", group="rl")
    td_clip: float = option(1.0, "clip TD errors to +-this (Huber loss; 0 = squared loss)", group="rl")
    double_q: bool = option(True, "Double Q-learning (van Hasselt et al. 2016)", group="rl")
    pal_alpha: float = option(0.9, "persistent advantage learning alpha (0 = off)", group="rl")
    loss: str = option("auto", "TD error: auto | dqn | double | al | pal | package.module:function", group="rl")
    n_step: int = option(1, "n-step returns (1 = the original's one-step targets)", group="rl")

    # Training
    optimiser: str = option("rmspropm", "optimiser", ("rmspropm", "rmsprop", "adam", "adadelta", "sgd"), group="training")
    eta: float = option(6.25e-5, "learning rate", group="training")
    eta_anneal: bool = option(False, "anneal the learning rate linearly to 0 by the last update (as the async agents)", group="training")
    momentum: float = option(0.95, "momentum / RMSProp decay", group="training")
    batch_size: int = option(32, "minibatch size", group="training")
    learn_start: int = option(50_000, "steps before learning starts", group="training")
    grad_clip: float = option(10.0, "clip the gradient's global L2 norm (0 = off)", group="training")
    loss_reduction: str = option("sum", "replay agents: the update's gradient is the sum over the batch (the original's and Nature DQN's) or each head's mean (DQN Zoo's, Young and Tian's); see docs/reduction.md", ("sum", "mean"), group="training")

    # Evaluation
    val_freq: int = option(250_000, "steps between greedy evaluations", group="eval")
    val_steps: int = option(125_000, "steps per evaluation (over --val-envs envs)", group="eval")
    val_envs: int = option(8, "environments per seed used by evaluation", group="eval")
    val_epsilon: float = option(0.001, "exploration rate during evaluation", group="eval")
    val_size: int = option(500, "held-out transitions for the average V and TD error", group="eval")
    checkpoint_every: bool = option(False, "keep every evaluation's checkpoint as checkpoints/step_<step> besides last and best", group="eval")
    checkpoint_replay: str = option("auto", "put the replay memory in checkpoints/last: auto = JAX-native envs up to 1 GiB, never host envs", ("auto", "true", "false"), group="eval")

    # Actor-learners (Mnih et al. 2016)
    async_method: str = option("none", "actor-learner instead of the replay agent", ("none", "sarsa", "onestep", "nstep", "a3c"), group="async", flag="--async")
    async_mode: str = option("sync", "sync: N envs stepped together; async: envpool's async API, acting on whichever envs are ready", ("sync", "async"), group="async")
    entropy_beta: float = option(0.01, "A3C entropy regularisation", group="async")
    rms_epsilon: float = option(0.1, "epsilon of the actor-learners' RMSProp", group="async")

    # Visual preprocessing of image observations (the original's -height -width -colorSpace)
    height: int = option(0, "resize image observations to this height (0 = the env's own; Atari: the protocol's 84)", group="preprocessing")
    width: int = option(0, "resize image observations to this width (0 = the env's own; Atari: the protocol's 84)", group="preprocessing")
    color_space: str = option("none", "convert RGB observations (y gives one channel; none keeps the env's frames, grey on Atari)", COLOR_SPACES, group="preprocessing")

    # Atari knobs: each overrides the --protocol's value; the default keeps the protocol's
    full_actions: str = option("auto", "the full 18-action set instead of the game's minimal set", ("auto", "true", "false"), group="atari")
    act_rep: int = option(0, "frames each action is repeated for (0 = the protocol's, 4)", group="atari")
    random_starts: int = option(-1, "at most this many no-op actions at the start of a game (-1 = the protocol's)", group="atari")
    pool_frms_type: str = option("auto", "how the last --pool-frms-size frames of a step are pooled", ("auto", "max", "mean"), group="atari")
    pool_frms_size: int = option(0, "frames pooled into one observation (0 = the protocol's, 2)", group="atari")
    life_loss_terminal: str = option("auto", "a lost life ends the bootstrap in training (never in evaluation)", ("auto", "true", "false"), group="atari")
    sticky_prob: float = option(-1.0, "sticky actions: probability that the previous action repeats (-1 = the protocol's)", group="atari")

    # Logging (the original's -progFreq and -reportWeights; --verbose is above)
    prog_freq: int = option(0, "a progress line at the first host sync after every N steps (0 = every --chunk-steps with no progress bar, none beside the bar)", group="logging")
    report_weights: bool = option(False, "at each validation, log mean and max |w| and |change of w since the last report| per layer", group="logging")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def flag_name(field_name: str) -> str:
    field = FIELDS.get(field_name)
    if field is not None and field.metadata.get("flag"):
        return field.metadata["flag"]
    return "--" + field_name.replace("_", "-")


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_preset(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; presets: {', '.join(list_presets())}")
    with path.open("rb") as f:
        values = tomllib.load(f)
    values.pop("description", None)
    values.pop("deviations", None)
    return values


def preset_description(name: str) -> str:
    with (CONFIG_DIR / f"{name}.toml").open("rb") as f:
        return tomllib.load(f).get("description", "")


def coerce(name: str, value: Any) -> Any:
    """Converts a preset or command-line value to the option's type, or raises ConfigError."""
    if name not in FIELDS:
        close = difflib.get_close_matches(name, list(FIELDS), n=3)
        hint = f" (did you mean {', '.join(flag_name(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown option {flag_name(name)}{hint}")
    kind = type(FIELDS[name].default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if kind is int:
            number = float(value)  # accepts 5e4 as the original's Lua did
            if not number.is_integer():
                raise ValueError
            return int(number)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag_name(name)} expects {kind.__name__}, got {value!r}") from None


def build_config(preset: str, overrides: dict[str, Any]) -> Config:
    """Defaults, then the preset, then overrides (later wins); validated."""
    values: dict[str, Any] = {"preset": preset}
    for source in (load_preset(preset), overrides):
        for name, value in source.items():
            values[name] = coerce(name, value)
    config = Config(**values)
    validate(config)
    return config


def resolved_loss(config: Config) -> str:
    """--loss auto follows the original: PAL when --pal-alpha > 0, else DQN (Double via --double-q)."""
    if config.loss != "auto":
        return config.loss
    return "pal" if config.pal_alpha > 0 else "dqn"


# Step, iteration and size counters are 32-bit integers inside the jitted loops.
MAX_COUNT = 2**31 - 1


def validate_bounds(c: Config) -> None:
    """Every integer option fits the loops' 32-bit counters (checked before the other rules,
    so a value such as --steps 1e99 stops here, in words)."""
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_COUNT:
            raise ConfigError(f"{flag_name(f.name)} must be at most {MAX_COUNT:,} (the loops "
                              f"count in 32-bit integers), got {value:.4g}")


def validate(c: Config) -> None:
    """The original's validation rules (Setup.lua validateOptions) plus ours; one line each."""
    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

    validate_bounds(c)

    for f in dataclasses.fields(c):
        choices = f.metadata.get("choices")
        if choices and getattr(c, f.name) not in choices:
            raise ConfigError(f"{flag_name(f.name)} must be one of {', '.join(choices)}, "
                              f"got {getattr(c, f.name)!r}")
    positive = ("seeds", "steps", "envs", "hist_len", "mem_size", "mem_sample_freq",
                "mem_n_samples", "batch_size", "tau", "chunk_steps", "val_freq", "val_envs",
                "size", "hidden_size", "mlp_hidden", "n_step", "val_size")
    for name in positive:
        require(getattr(c, name) > 0, f"{flag_name(name)} must be positive, got {getattr(c, name)}")
    for name in ("learn_start", "epsilon_steps", "bootstraps", "val_steps", "reward_clip",
                 "td_clip", "grad_clip", "pal_alpha", "eta", "burn_in", "height", "width",
                 "act_rep", "pool_frms_size", "prog_freq"):
        require(getattr(c, name) >= 0, f"{flag_name(name)} must not be negative, got {getattr(c, name)}")
    for name in ("epsilon_start", "epsilon_end", "val_epsilon", "flickering", "bootstrap_prob",
                 "beta_zero"):
        require(0.0 <= getattr(c, name) <= 1.0,
                f"{flag_name(name)} must be in [0, 1], got {getattr(c, name)}")
    require(0.0 < c.gamma <= 1.0, f"--gamma must be in (0, 1], got {c.gamma}")
    require(c.eta > 0, f"--eta must be positive, got {c.eta}")
    require(c.steps % c.envs == 0, f"--steps ({c.steps}) must be a multiple of --envs ({c.envs})")
    _validate_devices(c, require)
    _validate_sebulba(c, require)
    if c.async_method == "none":
        _validate_replay(c, require)
    else:
        _validate_actor_learner(c, require)
    if c.env == "atari":
        require(bool(c.game), "--env atari needs --game (e.g. --game SpaceInvaders)")
    if c.recurrent:
        require(c.n_step == 1, "--recurrent learns one-step targets along its sequences: use --n-step 1")
        require(c.async_method == "none", "--recurrent works with the replay agent only "
                "(the original's recurrent one-step Q actor-learner is not implemented)")
        require(c.mem_size // c.envs > c.burn_in + c.hist_len + 1,
                f"--mem-size per env ({c.mem_size // c.envs}) must exceed --burn-in + --hist-len + 1")
    require(c.random_starts >= -1, f"--random-starts must be -1 (the protocol's) or at least 0, got {c.random_starts}")
    require(c.sticky_prob == -1.0 or 0.0 <= c.sticky_prob <= 1.0,
            f"--sticky-prob must be -1 (the protocol's) or in [0, 1], got {c.sticky_prob}")
    if c.env != "atari":
        knobs = [flag_name(name) for name in atari_overrides(c)]
        verb = "applies" if len(knobs) == 1 else "apply"
        require(not knobs, f"{', '.join(knobs)} only {verb} to --env atari (this run plays {c.env})")
    if c.env in ("catch", "gridworld") and c.color_space != "none":
        require(False, f"--color-space {c.color_space} needs an RGB source; {c.env} gives grey frames "
                "with 1 channel")


def _validate_replay(c: Config, require) -> None:
    """The replay agents' memory and cadence rules (the actor-learners have no memory)."""
    # The original's rule 9 (Setup.lua, KA#68): a row no head may learn from would keep its
    # entry priority forever.
    require(c.bootstraps == 0 or c.mem_priority == "none",
            "--bootstraps > 0 cannot be combined with --mem-priority (as the original): "
            "set --bootstraps 0 or --mem-priority none")
    require(c.mem_size > c.batch_size,
            f"--mem-size ({c.mem_size}) must be larger than --batch-size ({c.batch_size})")
    require(c.mem_size % c.envs == 0,
            f"--mem-size ({c.mem_size}) must be a multiple of --envs ({c.envs})")
    require(c.mem_size // c.envs > c.hist_len + c.n_step,
            f"--mem-size per env ({c.mem_size // c.envs}) must exceed --hist-len + --n-step")
    require(c.learn_start >= c.batch_size,
            f"--learn-start ({c.learn_start}) must be at least --batch-size ({c.batch_size}) "
            "so the first batch can be drawn")
    require(c.learn_start <= c.mem_size,
            f"--learn-start ({c.learn_start}) must not exceed --mem-size ({c.mem_size})")
    cadence_ok = c.mem_sample_freq % c.envs == 0 or c.envs % c.mem_sample_freq == 0
    require(cadence_ok, f"--mem-sample-freq ({c.mem_sample_freq}) and --envs ({c.envs}) must "
            "divide one another (learning happens on whole iterations of all envs)")


def _validate_devices(c: Config, require) -> None:
    """--devices is all or a positive count that divides --seeds, or a multiple of --seeds
    whose devices per seed divide --envs and --batch-size (data-parallel seeds); whether
    that many exist is known only to JAX: ``jaxatari.devices.seed_placement``."""
    text = c.devices
    require(text == "all" or (text.isascii() and text.isdigit() and int(text) > 0),
            f"--devices must be a positive number of devices or all, got {c.devices!r}")
    if text == "all":
        return
    count = int(text)
    if count > c.seeds:
        problem = data_parallel_problem(c, count)
        require(problem is None, problem)
        return
    require(c.seeds % count == 0,
            f"--seeds {c.seeds} does not divide over --devices {count}: choose a "
            "--seeds that is a multiple of the device count (seeds are not padded)")


def data_parallel_problem(c: Config, count: int) -> str | None:
    """Why ``count`` devices (more than --seeds) cannot make each seed data-parallel over
    count / --seeds devices, or None: the devices per seed must divide its envs and, for
    the Q agent, its batch (each device steps its share of the envs and samples its share
    of the batch; an actor-learner's --batch-size is its rollout length, not split)."""
    if count % c.seeds:
        return (f"--devices {count} is more than --seeds {c.seeds} and not a multiple of it: "
                "with more devices than seeds each seed is split over --devices / --seeds "
                "devices (data-parallel), so choose a multiple of --seeds")
    shards = count // c.seeds
    per_seed = f"{shards} devices per seed (--devices {count} / --seeds {c.seeds})"
    if c.envs % shards:
        return (f"--envs {c.envs} does not divide over {per_seed}: each device steps an "
                "equal share of a seed's envs")
    if c.async_method == "none" and c.batch_size % shards:
        return (f"--batch-size {c.batch_size} does not divide over {per_seed}: each device "
                "samples an equal share of the batch")
    return None


def sebulba(c: Config) -> bool:
    """Whether the run asks for Sebulba (--actor-devices or --learner-devices above 1)."""
    return c.actor_devices > 1 or c.learner_devices > 1


def _validate_sebulba(c: Config, require) -> None:
    """--actor-devices and --learner-devices: positive; above 1, whole shares of the envs
    and the minibatch, and neither --devices nor the actor-learners (whether the devices
    exist and the env is a host env is known only later: ``devices.sebulba_placement``)."""
    for name in ("actor_devices", "learner_devices"):
        require(getattr(c, name) >= 1,
                f"{flag_name(name)} must be a positive number of devices, got {getattr(c, name)}")
    if not sebulba(c):
        return
    require(c.devices == "1", f"--devices {c.devices} splits seeds over devices, --actor-devices "
            "and --learner-devices split one run's envs and minibatches (Sebulba): use one "
            "or the other")
    require(c.async_method == "none", "--actor-devices and --learner-devices (Sebulba) are for "
            "the replay agents so far; the actor-learners (--async) run on one device")
    require(c.envs % c.actor_devices == 0,
            f"--envs {c.envs} does not divide over --actor-devices {c.actor_devices}: every "
            "actor device steps the same number of each seed's envs")
    require(c.batch_size % c.learner_devices == 0,
            f"--batch-size {c.batch_size} does not divide over --learner-devices "
            f"{c.learner_devices}: every learner device takes the same share of a minibatch")


def async_batch_size(num_envs: int) -> int:
    """envpool's batch in ``--async-mode async``: the largest proper divisor of ``num_envs``
    (half of an even count), so the envs in flight always fill whole batches."""
    for divisor in range(num_envs // 2, 0, -1):
        if num_envs % divisor == 0:
            return divisor
    return 1


def _validate_actor_learner(c: Config, require) -> None:
    """The original's rules for -async (Kaixhin/Atari Setup.lua validateOptions): no
    persistent advantage learning, no bootstrap heads, A3C with neither dueling heads nor
    Double Q; plus ours. The original also refused saliency maps; we compute them (of the
    chosen action's Q value or policy logit)."""
    require(c.bootstraps == 0, "actor-learners have no bootstrap heads: set --bootstraps 0")
    require(c.pal_alpha == 0, "actor-learners do not support persistent advantage learning: "
            "set --pal-alpha 0")
    if c.async_method == "a3c":
        require(not c.duel, "A3C has no dueling heads: set --duel false")
        require(not c.double_q, "A3C has no Double Q-learning: set --double-q false")
    require(c.loss == "auto", "--loss chooses the replay agents' TD error; actor-learners take "
            "their rule from --async")
    require(c.n_step == 1, "--n-step is the replay agents' option; actor-learners use "
            "--batch-size as t_max")
    require(c.loss_reduction == "sum", "--loss-reduction is the replay agents' option; "
            "actor-learners accumulate their rollouts' gradients as the original")
    actors = async_batch_size(c.envs) if c.async_mode == "async" else c.envs
    per_update = c.batch_size * actors
    require(c.steps >= per_update, f"--steps ({c.steps}) must cover at least one rollout of "
            f"--batch-size x actors per update ({per_update}) steps")
    if c.async_mode == "async":
        require(c.env == "atari" and c.backend == "envpool",
                "--async-mode async needs envpool's async API (--env atari --backend envpool); "
                f"use --async-mode sync for --env {c.env}")
        require(c.envs >= 2, "--async-mode async needs --envs of at least 2 so that some envs "
                "step while others are acted for")


def atari_overrides(c: Config) -> dict[str, Any]:
    """The Atari knobs set on the command line or in a preset, as protocol overrides."""
    overrides: dict[str, Any] = {}
    for name in ("full_actions", "life_loss_terminal"):
        if getattr(c, name) != "auto":
            overrides[name] = getattr(c, name) == "true"
    for name, unset in (("act_rep", 0), ("random_starts", -1), ("pool_frms_size", 0),
                        ("sticky_prob", -1.0)):
        if getattr(c, name) != unset:
            overrides[name] = getattr(c, name)
    if c.pool_frms_type != "auto":
        overrides["pool_frms_type"] = c.pool_frms_type
    return overrides


def config_json(config: Config, extra: dict[str, Any]) -> str:
    return json.dumps({**config.to_dict(), **extra}, indent=2, sort_keys=True, default=str)


# ---------------------------------------------------------------------- sweeps

# Options a sweep (``--sweep NAME=V1,V2``) may vary inside one compiled program: each enters
# the arithmetic only, never a shape or a branch, so it can be a traced array per
# configuration. Per agent kind, as each uses them.
SWEEPABLE_Q = ("eta", "gamma", "epsilon_end", "epsilon_steps", "tau", "pal_alpha", "alpha",
               "beta_zero", "td_clip", "reward_clip", "grad_clip")
# the Q actor-learners (--async sarsa, onestep, nstep; their final epsilons are drawn per
# actor, as the original) and A3C (no target network, no epsilon, no TD clipping)
SWEEPABLE_ASYNC_Q = ("eta", "gamma", "epsilon_steps", "tau", "td_clip", "reward_clip",
                     "grad_clip")
SWEEPABLE_A3C = ("eta", "gamma", "reward_clip", "grad_clip", "entropy_beta")
# Of these, 0 switches a mechanism off (a Huber loss becomes a square, clipping or PAL
# disappears): a different program, so a sweep takes positive values only.
SWEPT_SWITCHES = ("td_clip", "reward_clip", "grad_clip", "pal_alpha")
# map: one configuration after another in the program, each bit for bit its own run's;
# vmap: side by side (docs/sweeps.md has both measured)
SWEEP_MODES = ("map", "vmap")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A hyperparameter sweep: ``axes`` lists (option, values) in the order given; the
    configurations are their Cartesian product, the last option varying fastest."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    mode: str = "map"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def assignments(self) -> list[dict[str, Any]]:
        """{option: value} of every configuration, in product order."""
        return [dict(zip(self.names, values))
                for values in itertools.product(*(values for _, values in self.axes))]

    def configs(self, base: Config) -> list[Config]:
        """Every configuration as a validated Config (ConfigError names the sweep)."""
        configs = []
        for assignment in self.assignments():
            config = dataclasses.replace(base, **assignment)
            try:
                validate(config)
            except ConfigError as error:
                raise ConfigError(f"--sweep {label(assignment)}: {error}") from None
            configs.append(config)
        return configs

    def to_json(self) -> dict[str, Any]:
        return {"options": {flag_name(n)[2:]: list(v) for n, v in self.axes}, "mode": self.mode}


def label(assignment: dict[str, Any]) -> str:
    """``eta=0.001,gamma=0.9``: a configuration in the --sweep syntax."""
    return ",".join(f"{flag_name(name)[2:]}={value}" for name, value in assignment.items())


def sweepable(c: Config) -> tuple[str, ...]:
    """The options a sweep of this agent kind may vary (each one it uses)."""
    if c.async_method == "none":
        return SWEEPABLE_Q
    return SWEEPABLE_A3C if c.async_method == "a3c" else SWEEPABLE_ASYNC_Q


def parse_sweep(texts: list[str], base: Config, mode: str = "map") -> Sweep:
    """``--sweep NAME=V1,V2,...`` (repeatable) as a Sweep of ``base``; one-line ConfigError
    for an unknown or unsweepable option, a value of the wrong type, an empty or repeated
    list, or a swept value that turns a mechanism off."""
    if mode not in SWEEP_MODES:
        raise ConfigError(f"--sweep-mode must be one of {', '.join(SWEEP_MODES)}, got {mode!r}")
    allowed = sweepable(base)
    names_listed = ", ".join(flag_name(n)[2:] for n in allowed)
    axes = []
    for text in texts:
        name_text, equals, values_text = text.partition("=")
        name = name_text.strip().removeprefix("--").replace("-", "_")
        if not equals or not name:
            raise ConfigError(f"--sweep expects NAME=V1,V2,... (e.g. eta=1e-4,3e-4), got {text!r}")
        if name not in FIELDS:
            try:
                coerce(name, None)   # unknown option: its line, with "did you mean"
            except ConfigError as error:
                raise ConfigError(f"--sweep: {error}") from None
        flag = flag_name(name)
        if name not in allowed:
            agent = ("the replay agent" if base.async_method == "none"
                     else f"--async {base.async_method}")
            raise ConfigError(f"--sweep {flag[2:]}: not sweepable for {agent} (it sets a "
                              "shape, a branch or the envs of the program, or this agent does "
                              f"not use it); sweepable: {names_listed}")
        if name in (n for n, _ in axes):
            raise ConfigError(f"--sweep {flag[2:]} is given twice: list all its values once")
        pieces = [piece.strip() for piece in values_text.split(",")]
        if not values_text.strip() or "" in pieces:
            raise ConfigError(f"--sweep {flag[2:]}: empty value in {values_text!r}; give "
                              "NAME=V1,V2,...")
        try:
            values = tuple(coerce(name, piece) for piece in pieces)
        except ConfigError as error:
            raise ConfigError(f"--sweep: {error}") from None
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {flag[2:]} repeats a value in {values_text!r}")
        if name in SWEPT_SWITCHES and min(values) <= 0:
            raise ConfigError(f"--sweep {flag[2:]}: 0 turns it off, another program; sweep "
                              f"positive values (or run {flag} 0 on its own)")
        if name == "alpha" and base.mem_priority != "proportional":
            raise ConfigError("--sweep alpha needs --mem-priority proportional (rank-based "
                              "replay builds its sampling table from alpha; without "
                              "prioritised replay alpha has no effect)")
        if name == "beta_zero" and base.mem_priority == "none":
            raise ConfigError("--sweep beta-zero needs --mem-priority rank or proportional "
                              "(without prioritised replay it has no effect)")
        axes.append((name, values))
    if not axes:
        raise ConfigError("--sweep needs at least one NAME=V1,V2,...")
    return Sweep(axes=tuple(axes), mode=mode)
