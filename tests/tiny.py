"""A tiny Catch run shared by the checkpoint, export, evaluation and interrupt tests.

Spelled out in full (no preset, so preset tuning cannot change it): an MLP, 2 seeds x 4 envs,
16-iteration chunks, an evaluation every 128 steps.
"""
from __future__ import annotations

from jaxatari.config import Config, validate

TINY = dict(env="catch", seeds=2, envs=4, model_body="mlp", mlp_hidden=16, hidden_size=16,
            hist_len=2, duel=True, bootstraps=0, pal_alpha=0.0, double_q=True, mem_size=256,
            mem_sample_freq=4, mem_n_samples=1, batch_size=32, learn_start=64,
            epsilon_steps=256, epsilon_end=0.05, tau=8, optimiser="adam", eta=1e-3,
            grad_clip=0.0, val_freq=128, val_steps=128, val_envs=4, val_epsilon=0.0,
            chunk_steps=64)


def tiny(**overrides) -> Config:
    config = Config(**{**TINY, **overrides})
    validate(config)
    return config
