from anechat.textsafe import neutralize


def test_escape_sequences_are_made_visible():
    assert neutralize("a\x1b[2Jb") == "a^[[2Jb"
    assert neutralize("\x07bell\x9b31m") == "^Gbell\\x9b31m"


def test_ordinary_text_passes_unchanged():
    s = "Paris\n\tnaïve café — 東京 🙂 \u200d"
    assert neutralize(s) == s
