"""The plugin system: runtime plugin objects and real installed distributions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import oodlens
from oodlens.testing import check_scorer

FIXTURES = Path(__file__).parent / "fixtures"


class Doubled(oodlens.Scorer):
    name = "doubled_max_logit"
    description = "twice the max logit (test)"

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    def _score(self, outputs):
        return self.factor * outputs.logits.max(axis=1)


class GoodPlugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(Doubled)


class RaisingPlugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        raise RuntimeError("boom while registering")


class InvalidPlugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(object)  # not a Scorer subclass


class DuplicatePlugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(type("OtherMsp", (oodlens.Scorer,), {"name": "msp"}))
        register(type("Fine", (oodlens.Scorer,), {"name": "fine_besides_duplicate"}))


@pytest.fixture
def plugin():
    names = []

    def add(obj, name):
        names.append(oodlens.register_plugin(obj, name=name, distribution=f"dist-{name}"))

    yield add
    for name in names:
        oodlens.unregister_plugin(name)


def test_runtime_plugin_scorer_is_listed_and_conforms(plugin):
    plugin(GoodPlugin(), "good")
    assert "doubled_max_logit" in oodlens.list_scorers()
    check_scorer("doubled_max_logit", {"factor": 3.0})
    plugins, failures = oodlens.plugin_report()
    assert any(p.plugin == "good" and p.distribution == "dist-good" for p in plugins)
    assert not failures


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (RaisingPlugin(), "boom while registering"),
        (InvalidPlugin(), "expects a Scorer subclass"),
        (DuplicatePlugin(), "'msp' is already registered by 'oodlens'"),
    ],
)
def test_broken_plugin_is_reported_and_others_still_load(plugin, bad, match):
    plugin(bad, "bad")
    plugin(GoodPlugin(), "good")
    with pytest.warns(oodlens.PluginLoadWarning, match="'bad' from distribution 'dist-bad'"):
        names = oodlens.list_scorers()
    assert {"msp", "energy", "max_logit", "doubled_max_logit"} <= set(names)
    _, failures = oodlens.plugin_report()
    assert [(f.plugin, f.distribution) for f in failures] == [("bad", "dist-bad")]
    assert failures[0].stage.startswith("register_scorers")
    assert match in failures[0].error
    # the built-in msp survives a duplicate registration attempt
    assert type(oodlens.create_scorer("msp")).__module__ == "oodlens.scorers.logits"


def test_name_collision_drops_only_the_colliding_scorer(plugin):
    """Issue 10 item 9: a plugin whose scorer collides with a built-in keeps its other scorers."""
    plugin(DuplicatePlugin(), "dup")
    with pytest.warns(oodlens.PluginLoadWarning, match="'msp' is already registered"):
        names = oodlens.list_scorers()
    assert "fine_besides_duplicate" in names
    _, failures = oodlens.plugin_report()
    assert len(failures) == 1 and failures[0].stage == "register_scorers (msp)"


def test_unregister_removes_scorer(plugin):
    name = oodlens.register_plugin(GoodPlugin(), name="temp")
    assert "doubled_max_logit" in oodlens.list_scorers()
    oodlens.unregister_plugin(name)
    assert "doubled_max_logit" not in oodlens.list_scorers()
    with pytest.raises(KeyError, match="No plugin named 'temp'"):
        oodlens.unregister_plugin("temp")


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory):
    """pip-install the fixture distributions into a temporary target, as a user would."""
    target = tmp_path_factory.mktemp("site")
    for dist in ("plugin_good", "plugin_broken"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--target",
                str(target),
                str(FIXTURES / dist),
            ],
            check=True,
            capture_output=True,
        )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])
    )
    return env


def _run(env, *args):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_entry_point_plugin_discovered_through_metadata(installed_plugins):
    code = textwrap.dedent(
        """
        import warnings
        from importlib.metadata import entry_points
        eps = {ep.name: ep.dist.name for ep in entry_points(group="oodlens")}
        assert eps["test_plugin"] == "oodlens-test-plugin", eps
        assert eps["broken"] == "oodlens-broken-plugin", eps
        import oodlens
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = oodlens.list_scorers()
        assert "top2_gap" in names and "msp" in names, names
        assert any("oodlens-broken-plugin" in str(w.message) for w in caught)
        from oodlens.testing import check_scorer
        check_scorer("top2_gap")
        print("ok")
        """
    )
    result = _run(installed_plugins, sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.slow
def test_cli_lists_entry_point_plugins_and_failures(installed_plugins):
    exe = Path(sys.executable).with_name("oodlens")
    result = _run(installed_plugins, str(exe), "scorers")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("top2_gap"))
    assert "oodlens-test-plugin" in row and "logits" in row and "gap between the two largest" in row
    result = _run(installed_plugins, str(exe), "plugins")
    assert result.returncode == 0
    assert "oodlens-test-plugin:test_plugin" in result.stdout
    failed = result.stdout.split("Failed to load:")[1]
    assert "oodlens-broken-plugin" in failed and "import" in failed
    assert "a_module_that_does_not_exist" in failed


def test_scores_from_plugin_scorer_are_right(plugin):
    plugin(GoodPlugin(), "good")
    out = oodlens.Outputs(logits=np.array([[1.0, 3.0], [2.0, -1.0]]))
    s = oodlens.create_scorer("doubled_max_logit").fit(out).score(out)
    np.testing.assert_array_equal(s, [6.0, 4.0])
