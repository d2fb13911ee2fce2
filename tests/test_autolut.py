"""`--lut-* auto`: the fewest bits whose agreement reaches the documented threshold, measured as documented."""

import pytest
import yaml
from tiny import tiny_chat_checkpoint

from anechat.convert.ane.autolut import AUTO_MIN_TOP1, Agreement, choose
from anechat.convert.ane.compress import DEFAULT_GROUP, Calibration, Lut
from anechat.convert.build import ConvertOptions, convert
from anechat.convert.calibrate import calibration_ids


def test_the_first_candidate_reaching_the_threshold_wins_and_later_ones_are_not_measured():
    measured = []

    def agreement(lut):
        measured.append(lut.bits)
        return {4: 0.80, 6: 0.93, 8: 0.99}[lut.bits]

    choice = choose("ffn", agreement, threshold=0.90)
    assert choice.lut == Lut(6, DEFAULT_GROUP[6]) and measured == [4, 6]
    assert "LUT6,4" in choice.format() and "LUT4,1 80.0%" in choice.format()
    assert choose("ffn", agreement, threshold=0.5).lut == Lut(4, DEFAULT_GROUP[4])
    # nothing reaches it: the part stays uncompressed
    none = choose("lmhead", agreement, threshold=0.995)
    assert none.lut is None and [lut.bits for lut, _ in none.tried] == [4, 6, 8] and "fp16" in none.format()


def test_agreement_is_top1_of_the_reference_with_only_that_part_palettized():
    ckpt = tiny_chat_checkpoint("llama", num_layers=1)
    calibration = Calibration(ckpt)
    agreement = Agreement(ckpt, calibration, calibration_ids(ckpt.tokenizer_files["tokenizer.json"], limit=48))
    scores = {bits: agreement("ffn", Lut(bits, DEFAULT_GROUP[bits])) for bits in (4, 8)}
    assert 0 < scores[4] <= scores[8] <= 1
    assert agreement("lmhead", Lut(8, 16)) > 0.5


def test_convert_resolves_auto_and_records_the_choice(tmp_path):
    ckpt = tiny_chat_checkpoint("llama", num_layers=1)
    summary = convert(ckpt, tmp_path / "m", ConvertOptions(context=32, batch=4, lut_ffn="auto"))
    note = next(n for n in summary.notes if n.startswith("--lut-ffn auto"))
    assert f"≥ {AUTO_MIN_TOP1:.0%}" in note
    meta = yaml.safe_load((tmp_path / "m" / "meta.yaml").read_text())
    chosen = meta["anechat"]["lut"].get("ffn")
    tried = [float(p.split()[-1].rstrip("%)")) / 100 for p in note.split(": ", 2)[2].split(", ")]
    if chosen is None:  # as documented: no candidate kept the agreement
        assert max(tried) < AUTO_MIN_TOP1
    else:
        assert tried[-1] >= AUTO_MIN_TOP1 and all(t < AUTO_MIN_TOP1 for t in tried[:-1])
        assert meta["model_info"]["parameters"]["lut_ffn"] == int(chosen.split(",")[0])


@pytest.mark.parametrize("text", ["auto", "AUTO"])
def test_auto_passes_the_flag_check(text):
    ConvertOptions(lut_ffn=text, lut_lmhead=text).check_flags()
