import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test may touch the user's real data, config or cache dirs."""
    home = tmp_path_factory.mktemp("anechat-home")
    monkeypatch.setenv("ANECHAT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home
