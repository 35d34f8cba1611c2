"""The training loops: the edge that moves data between the pure agents of
``jaxatari.agents`` and the outside world (envs on the host, the run's session).

``session``: the ``Session`` protocol every loop talks to, the native chunk driver and the
host evaluator; ``settings``: the options translated into agent and cadence settings;
``checkpoint_items``: what a checkpoint holds for each agent kind, as frozen records;
``q_host``: the Q agent with host envs (its native loop is ``jaxatari.loop``'s chunk
driver call); ``actors``, ``actors_async`` and ``actor_common``: the actor-learners of
Mnih et al. 2016 (native, synchronous host and asynchronous envpool loops).
"""
