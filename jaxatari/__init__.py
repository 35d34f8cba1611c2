"""jaxatari: the Kaixhin/Atari family of deep RL agents in JAX.

Importing the package is cheap; JAX, envpool and the agents load when used.
"""
__version__ = "0.1.0"
