"""Human-normalised Atari scores with the table Kaixhin/Atari used, and where it comes from.

normalised = (score - random) / |human - random|   (Kaixhin/Atari ``Evaluator.lua``)

The random and human scores below are those of the 49 games of Mnih et al. 2015, "Human-level
control through deep reinforcement learning", Nature 518, Extended Data Table 2 ("Random Play"
and "Human" columns), exactly as Kaixhin/Atari's ``Evaluator.lua`` lists them. Its human scores
are the Nature paper's own (e.g. Alien 6875.4, Pong 9.3, Space Invaders 1652.3), sometimes
called "human_at5". DQN Zoo (``dqn_zoo/atari_data.py``) and Dopamine
(``dopamine/labs/atari_100k/normalization_utils.py``) use the later "human_at30" numbers
instead (e.g. Alien 7127.7, Pong 14.6, Space Invaders 1668.7), so normalised scores from those
projects are not comparable with these on every game.

Only Atari games get a normalised score: every other environment (Catch, GridWorld, MinAtar,
custom envs) returns ``None``.
"""
from __future__ import annotations

import re

import numpy as np

SOURCE = ("Mnih et al. 2015 (Nature), Extended Data Table 2, random and human scores as used by "
          "Kaixhin/Atari Evaluator.lua; DQN Zoo and Dopamine use 'human_at30' values instead")

# game: (random, human), in the order of Kaixhin/Atari Evaluator.lua.
TABLE: dict[str, tuple[float, float]] = {
    "alien": (227.8, 6875.4),
    "amidar": (5.8, 1675.8),
    "assault": (222.4, 1496.4),
    "asterix": (210.0, 8503.3),
    "asteroids": (719.1, 13156.7),
    "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 734.4),
    "battle_zone": (2360.0, 37800.0),
    "beam_rider": (363.9, 5774.7),
    "bowling": (23.1, 154.8),
    "boxing": (0.1, 4.3),
    "breakout": (1.7, 31.8),
    "centipede": (2090.9, 11963.2),
    "chopper_command": (811.0, 9881.8),
    "crazy_climber": (10780.5, 35410.5),
    "demon_attack": (152.1, 3401.3),
    "double_dunk": (-18.6, -15.5),
    "enduro": (0.0, 309.6),
    "fishing_derby": (-91.7, 5.5),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2321.0),
    "gravitar": (173.0, 2672.0),
    "hero": (1027.0, 25762.5),
    "ice_hockey": (-11.2, 0.9),
    "james_bond": (29.0, 406.7),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2394.6),
    "kung_fu_master": (258.5, 22736.2),
    "montezuma_revenge": (0.0, 4366.7),
    "ms_pacman": (307.3, 15693.4),
    "name_this_game": (2292.3, 4076.2),
    "pong": (-20.7, 9.3),
    "private_eye": (24.9, 69571.3),
    "q_bert": (163.9, 13455.0),
    "river_raid": (1338.5, 13513.3),
    "road_runner": (11.5, 7845.0),
    "robotank": (2.2, 11.9),
    "seaquest": (68.4, 20181.8),
    "space_invaders": (148.0, 1652.3),
    "star_gunner": (664.0, 10250.0),
    "tennis": (-23.8, -8.9),
    "time_pilot": (3568.0, 5925.0),
    "tutankham": (11.4, 167.6),
    "up_n_down": (533.4, 9082.0),
    "venture": (0.0, 1187.5),
    "video_pinball": (16256.9, 17297.6),
    "wizard_of_wor": (563.5, 4756.5),
    "zaxxon": (32.5, 9173.3),
}


def _key(name: str) -> str:
    """Spelling-insensitive game key: "SpaceInvaders", "space_invaders", "jamesbond" ..."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(name): scores for name, scores in TABLE.items()}


def random_and_human(game: str) -> tuple[float, float] | None:
    """(random, human) scores of an Atari game in any spelling, or None if not in the table."""
    if not game:
        return None
    return _BY_KEY.get(_key(game))


def normalise(game: str, scores):
    """Human-normalised score(s) of ``game``, or None for a game outside the table."""
    pair = random_and_human(game)
    if pair is None:
        return None
    random, human = pair
    return (np.asarray(scores, np.float64) - random) / abs(human - random)
