"""Config rules added for the update's correctness: the original's refusal of bootstrap heads
with prioritised replay (Setup.lua validateOptions, rule 9, KA#68) and --loss-reduction's
scope."""
from __future__ import annotations

import pytest

from jaxatari.config import ConfigError, build_config


@pytest.mark.parametrize("priority", ["rank", "proportional"])
def test_bootstrap_heads_with_prioritised_replay_are_refused(priority):
    """With K heads and masks of probability p, a sample whose masks are all 0 is never
    learned from, so it would keep its entry priority forever: the original refused it."""
    with pytest.raises(ConfigError) as info:
        build_config("bootstrap", {"mem_priority": priority})
    message = str(info.value)
    assert "\n" not in message
    assert "--bootstraps" in message and "--mem-priority" in message
    # either part alone is accepted
    assert build_config("bootstrap", {}).bootstraps == 10
    assert build_config("prioritised", {}).mem_priority == "rank"
    assert build_config("bootstrap", {"mem_priority": priority, "bootstraps": 0}).bootstraps == 0


def test_loss_reduction_is_the_replay_agents_option():
    assert build_config("demo", {"loss_reduction": "mean"}).loss_reduction == "mean"
    with pytest.raises(ConfigError, match="--loss-reduction"):
        build_config("demo-async", {"loss_reduction": "mean"})
    with pytest.raises(ConfigError, match="--loss-reduction must be one of sum, mean"):
        build_config("demo", {"loss_reduction": "average"})
