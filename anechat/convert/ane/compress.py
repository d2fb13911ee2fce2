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


def _lut_config(bits: int | None):
    import coremltools as ct

    if bits is None:
        return None
    if bits not in LUT_BITS:
        raise ConversionError(f"LUT bits must be one of {LUT_BITS}, got {bits}")
    # k-means gives better tables but needs a scikit-learn coremltools accepts; uniform LUTs are exact to build.
    mode = "kmeans" if kmeans_available() else "uniform"
    if mode == "uniform":
        log.info("scikit-learn (supported version) not found: using uniform LUTs instead of k-means")
    return ct.optimize.coreml.OpPalettizerConfig(
        nbits=bits, mode=mode, granularity="per_grouped_channel", group_size=GROUP_SIZE, weight_threshold=MIN_WEIGHT_ELEMENTS
    )


def _int8_config():
    import coremltools as ct

    return ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=MIN_WEIGHT_ELEMENTS
    )


def palettize(model, bits: int):
    import coremltools as ct

    return ct.optimize.coreml.palettize_weights(model, ct.optimize.coreml.OptimizationConfig(global_config=_lut_config(bits)))


def int8(model):
    import coremltools as ct

    return ct.optimize.coreml.linear_quantize_weights(model, ct.optimize.coreml.OptimizationConfig(global_config=_int8_config()))


def _ops_by_prefix(model, luts_by_prefix: dict[str, int | None]) -> dict[str, int | None]:
    """Op names → bits for the ops whose names start with a prefix (coremltools' passes append suffixes to
    the names a program gave its ops)."""
    found = {}
    for fn in model._mil_program.functions.values():
        for op in fn.operations:
            for prefix, bits in luts_by_prefix.items():
                if op.op_type != "const" and op.name.startswith(prefix):
                    found[op.name] = bits
    return found


def compress_by_op(model, default_lut: int | None, luts_by_prefix: dict[str, int | None], use_int8: bool):
    """One program holding several parts (monolithic): the weights of ops named with a prefix of luts_by_prefix get
    that LUT, every other weight default_lut; with use_int8, weights left without a LUT become linear int8 (as
    compress() does per part)."""
    import coremltools as ct

    opt = ct.optimize.coreml
    luts_by_op = _ops_by_prefix(model, luts_by_prefix)
    if default_lut or any(luts_by_op.values()):
        names = {n: _lut_config(bits) for n, bits in luts_by_op.items()}
        model = opt.palettize_weights(model, opt.OptimizationConfig(global_config=_lut_config(default_lut), op_name_configs=names))
    if use_int8:
        names = {n: None if bits else _int8_config() for n, bits in luts_by_op.items()}
        default = None if default_lut else _int8_config()
        if default is not None or any(v is not None for v in names.values()):
            model = opt.linear_quantize_weights(model, opt.OptimizationConfig(global_config=default, op_name_configs=names))
    return model


def compress(model, lut: int | None, use_int8: bool):
    if lut:
        return palettize(model, lut)
    if use_int8:
        return int8(model)
    return model
