"""Models: loading (packaged names, hub ids, local folders), the packaged table, per-architecture layer rows."""

from lowrank.models.architectures import compressible_linears, compressible_weights
from lowrank.models.errors import ModelLoadError
from lowrank.models.loading import load_model, model_kind
from lowrank.models.packaged import PACKAGED

__all__ = ["PACKAGED", "ModelLoadError", "compressible_linears", "compressible_weights", "load_model", "model_kind"]
