"""Convert trained MHA/GQA/MQA attention to MLA by low-rank factorization (``to_mla``).

    from attnbench import variants
    mla = variants.to_mla(gqa_layer, d_c=128, d_r=32, method="whitened", calibration_BTD=x)

``api`` holds the conversion, ``partial_rope`` the choice of rotary frequency pairs, and
``methods/`` one file per low-rank method behind ``method.LowRankMethod``.
"""

from attnbench.variants.convert.api import Conversion, available_rank, convert, to_mla
from attnbench.variants.convert.method import METHODS, LowRankMethod, method_names, register_method
from attnbench.variants.convert.partial_rope import PAIR_STRATEGIES

__all__ = ["METHODS", "PAIR_STRATEGIES", "Conversion", "LowRankMethod", "available_rank", "convert",
           "method_names", "register_method", "to_mla"]
