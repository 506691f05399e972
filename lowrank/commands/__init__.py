"""Sub-commands of ``python -m lowrank``: each module here has ``register(subparsers)``."""
