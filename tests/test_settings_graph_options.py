"""Graph options are checked when the settings load (ragkit.toml, Settings.merged), not when a graph mode first runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.config import Settings, load_settings
from ragkit.errors import ConfigError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{ dampng = 0.5 }', "unknown key(s) dampng"),
        ('{ damping = 2.0 }', "graph.options.damping: must be strictly between 0 and 1"),
        ('{ n_process = "two" }', "graph.options.n_process: expected an integer"),
    ],
)
def test_a_bad_graph_option_in_ragkit_toml_is_an_error_at_load(tmp_path: Path, options: str, message: str) -> None:
    path = tmp_path / "ragkit.toml"
    path.write_text(f"[graph]\noptions = {options}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_good_graph_options_load_and_merged_settings_are_checked_too() -> None:
    settings = Settings().merged(graph={"options": {"damping": 0.6, "n_process": 1}})
    assert settings.graph.options == {"damping": 0.6, "n_process": 1}
    with pytest.raises(ConfigError, match="max_hops"):
        Settings().merged(graph={"options": {"max_hops": 0}})
