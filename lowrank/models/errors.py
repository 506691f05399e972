"""The error every model-loading failure raises (shown by the CLI as ``error: ...``)."""


class ModelLoadError(ValueError):
    """The model cannot be loaded (unknown id, unsafe checkpoint, too large...)."""
