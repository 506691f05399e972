"""lowrank-studio: weighted low-rank factorization of Transformer language models.

Library API (the CLI ``python -m lowrank`` and the dashboard mirror it)::

    import lowrank
    m = lowrank.load_model("minilm-rt")
    table = lowrank.spectra(m)
    small = lowrank.compress(m, 0.5, method="svd")
    lowrank.evaluate(small, "rotten_tomatoes")
    lowrank.save_compressed(small, "out/minilm-rt-50")
"""

from .architectures import compressible_linears
from .compress import CompressionInfo, compress, load_compressed, resolve_ranks, save_compressed
from .data import Task, TaskError, load_task
from .evaluate import Evaluation, evaluate
from .factorize import Factorization, available_methods, factorize, register_method
from .finetune import TrainConfig, finetune
from .layers import LowRankLinear
from .models import PACKAGED, LoadedModel, ModelLoadError, load_model
from .spectra import spectra

__all__ = [
    "CompressionInfo", "Evaluation", "Factorization", "LoadedModel", "LowRankLinear", "ModelLoadError",
    "PACKAGED", "Task", "TaskError", "TrainConfig", "available_methods", "compress", "compressible_linears",
    "evaluate", "factorize", "finetune", "load_compressed", "load_model", "load_task", "register_method",
    "resolve_ranks", "save_compressed", "spectra",
]
