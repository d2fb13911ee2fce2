"""Core ML's known failures as static checks (anechat/runtime/anechecks.py): each fires on the program shape its
source reports and only there; anechat's own conversions pass every one; the reports name source and fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_chat_checkpoint

from anechat.convert.build import ConvertOptions, convert
from anechat.runtime.anechecks import CHECKS, FAIL, OK, WARN, Facts, check_facts, check_model, summary
from anechat.runtime.milexec.ir import Function, Op, Program, TensorType, Var

KV = "model_model_kv_cache_0"


def fn(name="infer", states=None, ops=(), outputs=("out",), inputs=None) -> Function:
    return Function(name, inputs or {"x": TensorType("fp16", (1, 64, 1, 1))}, states or {}, list(outputs), list(ops))


def state_io(state=KV, value_dtype="fp16", shape=(4, 2, 64, 32), update_dtype="fp16") -> list[Op]:
    """read_state → slice_update → coreml_update_state, the KV write every chunk does."""
    return [
        Op("read_state", {"input": Var(state)}, ["cache"], [TensorType(value_dtype, shape)]),
        Op("slice_update", {"x": Var("cache"), "update": Var("kv")}, ["written"], [TensorType(value_dtype, shape)]),
        Op("coreml_update_state", {"state": Var(state), "value": Var("written")}, ["stored"], [TensorType(value_dtype, shape)]),
        Op("identity", {"x": Var("x")}, ["out"], [TensorType("fp16", (1, 64, 1, 1))]),
    ], {"kv": TensorType(update_dtype, (1, 2, 1, shape[-1]))}


def results(*functions: Function, weight_bytes: int = 1000, version: str | None = "9.0") -> dict[str, tuple[str, list[str]]]:
    program = Program({f.name: f for f in functions}, functions[0].name, "test", {"com.github.apple.coremltools.version": version} if version else {})
    part = check_facts(Facts("chunk 1", Path("x.mlpackage"), program, weight_bytes))
    return {r.check.id: (r.status, [f.where for f in r.findings]) for r in part.results}


def stateful(shape=(4, 2, 64, 32), dtype="fp16", update_dtype="fp16", extra_ops=(), extra_states=None, outputs=("out",)) -> Function:
    ops, extra_inputs = state_io(shape=shape, value_dtype=dtype, update_dtype=update_dtype)
    states = {KV: TensorType(dtype, shape), **(extra_states or {})}
    return fn(states=states, ops=[*ops, *extra_ops], inputs={"x": TensorType("fp16", (1, 64, 1, 1)), **extra_inputs}, outputs=outputs)


def test_a_sound_stateful_program_passes_every_check():
    found = results(stateful())
    assert set(found) == {c.id for c in CHECKS} and all(status == OK for status, _ in found.values()), found


def test_state_last_axis_not_a_multiple_of_32():
    status, where = results(stateful(shape=(4, 2, 64, 16)))["state-last-axis"]
    assert status == FAIL and where == [f"infer: state {KV} (4, 2, 64, 16): last axis 16"]
    assert results(stateful(shape=(4, 2, 64, 256)))["state-last-axis"][0] == OK


def test_states_must_be_fp16():
    assert results(stateful(dtype="fp32", update_dtype="fp32"))["state-dtype"][0] == FAIL


def test_a_declared_state_nothing_reads():
    unused = {"model_model_conv_state": TensorType("fp16", (2, 64, 1, 32))}
    assert results(stateful(extra_states=unused))["unused-state"] == (FAIL, ["infer: state model_model_conv_state is declared and never read"])
    # coremltools 9.1 converts it (#2661 fixed): still worth a warning
    assert results(stateful(extra_states=unused), version="9.1.dev0")["unused-state"][0] == WARN


def lut_op(name: str, entries: int) -> Op:
    return Op("constexpr_lut_to_dense", {"indices": np.zeros((64, 64), np.uint8), "lut": np.zeros((4, 1, entries, 1), np.float16)},
              [name], [TensorType("fp16", (64, 64))])


def test_4bit_palettize_weights_luts_in_a_stateful_program_from_coremltools_90():
    made_by_coremltools = stateful(extra_ops=[lut_op("w_palettized", 16)])
    assert results(made_by_coremltools)["lut4-stateful"][0] == WARN
    assert results(made_by_coremltools, version="8.3.0")["lut4-stateful"][0] == OK
    assert results(stateful(extra_ops=[lut_op("w_palettized", 64)]))["lut4-stateful"][0] == OK  # 6-bit
    assert results(stateful(extra_ops=[lut_op("constexpr_lut_to_dense_0", 16)]))["lut4-stateful"][0] == OK  # written directly
    assert results(fn(ops=[lut_op("w_palettized", 16)]))["lut4-stateful"][0] == OK  # stateless


def test_lut_feeding_a_blockwise_shift_scale():
    chain = [lut_op("w_palettized", 16),
             Op("constexpr_blockwise_shift_scale", {"data": Var("w_palettized"), "scale": np.ones((64, 1), np.float16)},
                ["w_palettized_pcs"], [TensorType("fp16", (64, 64))])]
    assert results(fn(ops=chain))["lut-shift-scale"] == (FAIL, ["infer: 1 constexpr_lut_to_dense → constexpr_blockwise_shift_scale (fp16)"])
    int8 = [Op("constexpr_blockwise_shift_scale", {"data": np.zeros((64, 64), np.int8), "scale": np.ones((64, 1), np.float16)},
               ["w_q"], [TensorType("fp16", (64, 64))])]
    assert results(fn(ops=int8))["lut-shift-scale"][0] == OK


def test_int8_with_scales_per_block_of_inputs_warns():
    def int8(scale_shape):
        return Op("constexpr_blockwise_shift_scale", {"data": np.zeros((64, 64, 1, 1), np.int8), "scale": np.ones(scale_shape, np.float16),
                                                      "offset": np.zeros(scale_shape, np.float16)}, ["w_q"], [TensorType("fp16", (64, 64, 1, 1))])

    assert results(fn(ops=[int8((64, 2, 1, 1))]))["int8-blocks"] == (WARN, ["infer: 1 int8 weights with per-block scales"])
    assert results(fn(ops=[int8((64, 1, 1, 1))]))["int8-blocks"] == (OK, [])


def test_slice_update_of_another_dtype():
    assert results(stateful(update_dtype="fp32"))["slice-update-dtype"] == (FAIL, ["infer: slice_update written: update fp32 into fp16"])


def test_dimensions_and_rank():
    wide = Op("conv", {"x": Var("x")}, ["logits"], [TensorType("fp16", (1, 20000, 1, 1))])
    assert results(fn(ops=[wide]))["dimensions"][0] == OK  # C may reach 65536
    too_wide = Op("conv", {"x": Var("x")}, ["logits"], [TensorType("fp16", (1, 1, 1, 20000))])
    assert results(fn(ops=[too_wide]))["dimensions"] == (FAIL, ["infer: conv logits (1, 1, 1, 20000)"])
    assert results(fn(ops=[Op("conv", {}, ["c"], [TensorType("fp16", (1, 70000, 1, 1))])]))["dimensions"][0] == FAIL
    weight = Op("const", {}, ["table"], [TensorType("fp16", (49152, 576))])  # weights are not computed on
    assert results(fn(ops=[weight]))["dimensions"][0] == OK
    deep = Op("reshape", {"x": Var("x")}, ["r"], [TensorType("fp16", (1, 2, 2, 2, 2, 4))])
    assert results(fn(ops=[deep]))["rank"] == (FAIL, ["infer: reshape r has rank 6"])


def test_weights_per_program():
    assert results(fn(), weight_bytes=900_000_000)["weights"][0] == OK
    assert results(fn(), weight_bytes=998_058_752)["weights"][0] == WARN  # Qwen 3.5 0.8B's chunk: 1.9 MB under 1 GB
    assert results(fn(), weight_bytes=3 << 30)["weights"][0] == FAIL


def test_states_of_different_shapes():
    two = {"model_model_kv_cache_local": TensorType("fp16", (6, 2, 16, 32))}
    reads = [Op("read_state", {"input": Var("model_model_kv_cache_local")}, ["c2"], [TensorType("fp16", (6, 2, 16, 32))])]
    assert results(stateful(extra_states=two, extra_ops=reads))["state-shapes"][0] == WARN


def test_an_output_written_into_a_state():
    ops, extra = state_io()
    ops[-1] = Op("identity", {"x": Var("kv")}, ["out"], [TensorType("fp16", (1, 2, 1, 32))])
    f = fn(states={KV: TensorType("fp16", (4, 2, 64, 32))}, ops=ops, inputs={"x": TensorType("fp16", (1, 64, 1, 1)), **extra},
           outputs=("written",))
    assert results(f)["output-feeds-state"] == (FAIL, ["infer: output written is written into a state"])


# -- anechat's own conversions pass every check ------------------------------------------------------------------


OWN = {
    "fp16, 2 chunks": ("llama", ConvertOptions(context=64, batch=8, chunks=2)),
    "LUT4": ("llama", ConvertOptions(context=64, batch=8, lut_ffn="4", lut_lmhead="4")),
    "int8 per channel": ("qwen3", ConvertOptions(context=64, batch=8, int8=True, int8_block=0)),
    "monolithic argmax": ("qwen2", ConvertOptions(context=64, batch=8, monolithic=True, argmax=True)),
}


@pytest.mark.parametrize("case", list(OWN))
def test_anechats_conversions_pass_every_check(tmp_path, case):
    arch, options = OWN[case]
    convert(tiny_chat_checkpoint(arch), tmp_path / "m", options)  # head_dim 16: the KV state is padded to 32
    failures, warnings = summary(check_model(tmp_path / "m"))
    assert failures == [] and warnings == []


def test_anechats_block_int8_warns_of_the_neural_engine_report(tmp_path):
    """--int8's blocks of 32 are what keep a GGUF's Q4_1/Q8_0 weights exact; one report says the Neural Engine
    gets per-block int8 wrong (a warning to check on the device, with --int8-block 0 as the way out)."""
    convert(tiny_chat_checkpoint("qwen3"), tmp_path / "m", ConvertOptions(context=64, batch=8, int8=True))
    failures, warnings = summary(check_model(tmp_path / "m"))
    assert failures == [] and warnings and all("int8 weights with per-block scales" in w for w in warnings), warnings


@pytest.mark.parametrize("context", [64, 16])
def test_anechats_gemma3_passes_every_check(tmp_path, context):
    """Past a window shorter than the context, sliding and global layers keep caches of different lengths, as
    ANEMLL's Gemma 3 does: M1/A14 cannot compile that (a warning for those chips, not a failure). A context
    the window (16) covers keeps one state and passes everything."""
    two_layers = tiny_chat_checkpoint("gemma3", num_layers=2, layer_types=["sliding_attention", "full_attention"])
    convert(two_layers, tmp_path / "m", ConvertOptions(context=context, batch=8))
    failures, warnings = summary(check_model(tmp_path / "m"))
    assert failures == []
    if context > 16:
        assert len(warnings) == 1 and "states of one shape" in warnings[0]
    else:
        assert warnings == []


def test_anechats_qwen35_passes_every_check(tmp_path):
    from test_qwen3_5 import MODEL, _two_layers

    from anechat.convert.checkpoint import load_checkpoint

    convert(_two_layers(load_checkpoint(MODEL)), tmp_path / "m", ConvertOptions(context=64, batch=4))
    failures, warnings = summary(check_model(tmp_path / "m"))
    assert failures == []
    # the KV, conv and delta states differ in shape by nature: M1/A14 only
    assert all("states of one shape" in w for w in warnings)


def test_inspect_ane_shows_each_check_per_part(tmp_path, capsys):
    from anechat import cli

    convert(tiny_chat_checkpoint("llama"), tmp_path / "m", ConvertOptions(context=64, batch=8))
    assert cli.main(["inspect", "--ane", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    # embeddings, chunk, lm_head; the merged chunk keeps the coremltools version (save_multifunction drops it)
    assert out.count("known Core ML failures (built with coremltools ") == 3
    for c in CHECKS:
        assert out.count(f"ok    {c.title} ({c.source})") == 3
