"""lowrank-studio: weighted low-rank factorization of Transformer language models.

Library API (the ``lowrank`` command mirrors it)::

    import lowrank
    m = lowrank.load_model("minilm-rt")
    small = lowrank.compress(m, 0.5, method="svd")
    lowrank.evaluate(small, "rotten_tomatoes")
    lowrank.save_compressed(small, "out/minilm-rt-50", speed=lowrank.SpeedSettings(batch=8, length=128))  # fastest form per layer
    stats = lowrank.statistics_for(m, "rotten_tomatoes", ("fisher",))   # what weighted methods need
    lowrank.compress(m, 0.5, method="tfwsvd", stats=stats)
    lowrank.generate(m_lm, ["The city"], max_new_tokens=32)   # greedy text from a causal LM
    lowrank.compress_sequential("big-llama/", 0.5, "svd_llm", out="out/big-50", task="lee")  # one block in memory
    lm = lowrank.load_model("smollm2-135m")
    lowrank.compress_in_memory(lm, 0.8, lowrank.method_form(lm, "kfac_svd"), "lee")  # compensated on a decoder
    transformers.AutoModelForSequenceClassification.from_pretrained("out/minilm-rt-50")  # after import lowrank
    healed = lowrank.heal(small, m, "rotten_tomatoes")  # toward the dense model, the recipe of a classifier
"""

from lowrank.allocation import RankPlan, allocate, available_strategies
from lowrank.analysis.spectra import spectra
from lowrank.compress import compress, load_compressed, save_compressed
from lowrank.data import Task, TaskError, load_task
from lowrank.evaluation import Evaluation, evaluate
from lowrank.generation import generate
from lowrank.healing import HealConfig, heal, heal_sequential
from lowrank.info import CompressionInfo
from lowrank.layers import LowRankLinear
from lowrank.loaded import LoadedModel
from lowrank.methods import Factorization, available_methods, factorize, get_method, register_method
from lowrank.models import PACKAGED, ModelLoadError, compressible_linears, load_model
from lowrank.models.quantizer import LowRankConfig  # importing it registers the 'lowrank' method with transformers
from lowrank.ranks import resolve_ranks
from lowrank.sequential import compress_in_blocks, compress_in_memory, compress_sequential, method_form
from lowrank.speed import SpeedSettings, optimize_speed
from lowrank.statistics import StatisticsSettings, statistics_for
from lowrank.training.finetune import TrainConfig, finetune

__all__ = [
    "CompressionInfo",
    "Evaluation",
    "HealConfig",
    "Factorization",
    "LoadedModel",
    "LowRankConfig",
    "LowRankLinear",
    "ModelLoadError",
    "PACKAGED",
    "RankPlan",
    "SpeedSettings",
    "StatisticsSettings",
    "Task",
    "TaskError",
    "TrainConfig",
    "allocate",
    "available_methods",
    "available_strategies",
    "compress",
    "compress_in_blocks",
    "compress_in_memory",
    "method_form",
    "compress_sequential",
    "compressible_linears",
    "evaluate",
    "factorize",
    "finetune",
    "generate",
    "get_method",
    "heal",
    "heal_sequential",
    "load_compressed",
    "load_model",
    "load_task",
    "optimize_speed",
    "register_method",
    "resolve_ranks",
    "save_compressed",
    "spectra",
    "statistics_for",
]
