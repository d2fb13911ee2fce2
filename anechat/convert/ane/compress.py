"""Weight compression of a converted part: per-grouped-channel LUT palettization or linear int8."""

from __future__ import annotations

import logging

from anechat.errors import ConversionError

log = logging.getLogger(__name__)
LUT_BITS = (4, 6, 8)
GROUP_SIZE = 16
MIN_WEIGHT_ELEMENTS = 2048  # norms, biases and rope tables stay fp16


def kmeans_available() -> bool:
    try:
        from coremltools._deps import _HAS_SKLEARN
    except ImportError:
        return False
    return bool(_HAS_SKLEARN)


def palettize(model, bits: int):
    import coremltools as ct

    if bits not in LUT_BITS:
        raise ConversionError(f"LUT bits must be one of {LUT_BITS}, got {bits}")
    # k-means gives better tables but needs a scikit-learn coremltools accepts; uniform LUTs are exact to build.
    mode = "kmeans" if kmeans_available() else "uniform"
    if mode == "uniform":
        log.info("scikit-learn (supported version) not found: using uniform LUTs instead of k-means")
    cfg = ct.optimize.coreml.OpPalettizerConfig(
        nbits=bits, mode=mode, granularity="per_grouped_channel", group_size=GROUP_SIZE, weight_threshold=MIN_WEIGHT_ELEMENTS
    )
    return ct.optimize.coreml.palettize_weights(model, ct.optimize.coreml.OptimizationConfig(global_config=cfg))


def int8(model):
    import coremltools as ct

    cfg = ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=MIN_WEIGHT_ELEMENTS
    )
    return ct.optimize.coreml.linear_quantize_weights(model, ct.optimize.coreml.OptimizationConfig(global_config=cfg))


def compress(model, lut: int | None, use_int8: bool):
    if lut:
        return palettize(model, lut)
    if use_int8:
        return int8(model)
    return model
