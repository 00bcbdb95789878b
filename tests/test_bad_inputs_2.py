"""Second catalogue of bad and unusual inputs ("Trustworthy numbers I", issue 21).

One or more tests per numbered item of the issue, named ``test_<item>_...``. Each asserts
that the message names the problem (and the fix where there is one), or that the result is
right; the CLI's ``main()`` runs in-process and must end in one line, never a traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import oodlens
from oodlens import cli, registry
from oodlens.bench import BenchmarkConfig, OODSet, load_config, run_benchmark
from oodlens.bench.compare import merge_runs
from oodlens.bench.config import parse_ood_spec
from oodlens.bench.report import to_markdown
from oodlens.bench.result import REPORT_FORMATS, ReportFormat
from oodlens.cache import EXTRACTION_VERSION, Cache
from oodlens.conformal import ConformalRejector, conformal_p_values
from oodlens.datasets import align_classes
from oodlens.metrics import METRICS, Metric, metric_columns
from oodlens.options import ExtractOptions
from oodlens.params import invalid_values
from oodlens.plots import plot_roc
from oodlens.testing import synthetic_outputs
from oodlens.train import TrainConfig, train_model

pytestmark = pytest.mark.slow

NOISE = "far:noise=noise:gaussian,n=20,size=16"
ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("oodlens: error:")]
    assert len(lines) == 1, err
    return lines[0]


def train_tiny(path: Path, seed: int = 0) -> Path:
    cfg = TrainConfig(
        data="digits:0-2", img_size=16, epochs=1, batch_size=128, hflip=False, seed=seed
    )
    train_model(cfg, path, progress=False)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """resnet18 on digits 0-2 at 16 px, one epoch: a real oodlens checkpoint, in seconds."""
    return train_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def second_ckpt(tmp_path_factory) -> Path:
    """The same architecture and data, another seed: a second network."""
    return train_tiny(tmp_path_factory.mktemp("ckpt2") / "other.safetensors", seed=1)


def bench_args(ckpt: Path, cache: Path, *extra: object) -> list[object]:
    return [
        "bench", "--model", "resnet18", "--checkpoint", ckpt, "--id", "digits:0-2",
        "--img-size", "16", "--ood", NOISE, "--scorers", "msp", "--cache-dir", cache, "-q",
        *extra,
    ]  # fmt: skip


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def image_folder(root: Path, classes: dict[str, int], size: int = 12) -> Path:
    """An ImageFolder: ``classes`` maps a class folder to its number of images."""
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


# --- 1. typed, validated configuration -------------------------------------------------------
CONFIG_CLASSES = (BenchmarkConfig, TrainConfig, ExtractOptions)
FIELD_CASES = [
    (cls, f.name, kind, value)
    for cls in CONFIG_CLASSES
    for f in dataclasses.fields(cls)
    for kind, value in invalid_values(cls.parameter_constraints[f.name]).items()
]


@pytest.mark.parametrize(
    "cls,name,kind,value",
    FIELD_CASES,
    ids=[f"{c.__name__}.{n}-{k}" for c, n, k, _ in FIELD_CASES],
)
def test_1_every_config_field_refuses_a_wrong_type_and_a_value_out_of_range(cls, name, kind, value):
    """Values generated from the declared constraints alone (as scikit-learn's common tests
    do): a wrong type for every field, and a value of the right type out of range wherever
    one exists (a boolean has none)."""
    with pytest.raises(oodlens.InvalidParameterError) as info:
        cls(**{name: value})
    message = str(info.value)
    assert "\n" not in message
    assert f"{cls.__name__}: {name}={value!r} is not valid; it must be" in message


def test_1_every_config_field_declares_its_constraints():
    for cls in CONFIG_CLASSES:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == set(cls.parameter_constraints), cls.__name__
        typed = {n for c, n, k, _ in FIELD_CASES if c is cls and k == "type"}
        assert typed == fields, f"{cls.__name__}: no wrong-type value for {fields - typed}"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("img_size: abc\n", "img_size='abc' is not valid; it must be an int in [1, inf) or None"),
        ("threshold: high\n", "threshold='high' is not valid; it must be a float"),
        ("cache_dir: 5\n", "cache_dir=5 is not valid; it must be a path"),
        ("benchmark:\n", "'benchmark:' must hold a mapping of options, got None"),
        ("train: {epochs: many}\n", "epochs='many' is not valid; it must be an int in [1, inf)"),
        ("batch_size: 0\n", "batch_size=0 is not valid"),
        ("ood: [{name: x, spec: 'noise:uniform', color: red}]\n", "unknown key(s) ['color']"),
    ],
)
def test_1_bad_yaml_values_are_one_line_before_any_work(tmp_path, capsys, text, expected):
    cache = tmp_path / "cache"
    config = write_yaml(tmp_path, text + f"cache_dir: {cache}\n" * ("cache_dir" not in text))
    rc, out, err = run_cli(capsys, "bench", "--config", config)
    line = one_line_error(err)
    assert rc == 2 and expected in line and str(config) in line
    assert not cache.exists() and out == ""  # nothing trained, extracted or cached


def test_1_negative_epochs_are_refused_by_train_and_bench(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    rc, _, err = run_cli(capsys, "train", "--epochs", "-3", "--out", out)
    assert rc == 2 and "epochs=-3 is not valid; it must be an int in [1, inf)" in err
    assert not out.exists()
    rc, _, err = run_cli(capsys, "bench", "--epochs", "-3", "--cache-dir", tmp_path / "c", "-q")
    assert rc == 2 and "BenchmarkConfig.train: TrainConfig: epochs=-3 is not valid" in err
    assert not (tmp_path / "c").exists()


def test_1_bad_extraction_options_on_the_command_line(tmp_path, capsys, tiny_ckpt):
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--batch-size", "0"))
    assert rc == 2 and "batch_size=0 is not valid; it must be an int in [1, inf)" in err
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--num-workers", "-2"))
    assert rc == 2 and "num_workers=-2 is not valid" in err
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    rc, _, err = run_cli(
        capsys, "explain", img, "--model", "resnet18", "--checkpoint", tiny_ckpt,
        "--img-size", "-1", "--out", tmp_path / "e.png", "-q",
    )  # fmt: skip
    assert rc == 2 and "ExtractOptions: img_size=-1 is not valid" in err


def test_1_extraction_options_travel_as_one_object_into_the_cache_key(tmp_path, tiny_ckpt):
    """Row fields are in the key (a new precision is a miss); the device, the batch size
    and the workers are not, and do not change the rows."""
    from oodlens.backbones import build_transform, create_backbone
    from oodlens.cache import Cache
    from oodlens.extract import cached_extract

    assert set(ExtractOptions.ROW_FIELDS) | set(ExtractOptions.RUN_FIELDS) == {
        f.name for f in dataclasses.fields(ExtractOptions)
    }
    assert not set(ExtractOptions.ROW_FIELDS) & set(ExtractOptions.RUN_FIELDS)
    model, cfg = create_backbone("resnet18", checkpoint=str(tiny_ckpt))
    transform, data_cfg = build_transform(model, cfg.img_size)
    source = oodlens.load_dataset("digits:0-2@test")
    cache = Cache(tmp_path / "cache")
    args = (lambda: model, "resnet18", "w", source, transform, tuple(data_cfg["input_size"]), cache)
    first, hit, _ = cached_extract(
        *args, ExtractOptions(batch_size=7, num_workers=0), progress=False
    )
    assert not hit
    again, hit, _ = cached_extract(
        *args, ExtractOptions(batch_size=64, num_workers=2, device="cpu"), progress=False
    )
    assert hit  # batch size, workers and device are not in the key
    uncached = oodlens.extract_outputs(
        model, source, transform, tuple(data_cfg["input_size"]), progress=False,
        batch_size=64, num_workers=2,
    )  # fmt: skip
    np.testing.assert_allclose(uncached.logits, first.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uncached.features, first.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(uncached.labels, first.labels)
    _, hit, _ = cached_extract(*args, ExtractOptions(skip_corrupt=True), progress=False)
    assert not hit  # a row field is in the key


def test_1_models_root_is_a_flag_of_bench(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    config = write_yaml(tmp_path, "checkpoints: ['{models_root}/m.safetensors']\n")
    with pytest.raises(FileNotFoundError, match="pass --models-root DIR"):
        load_config(config)
    cfg = load_config(config, models_root=models)
    assert cfg.checkpoints == (str(models.resolve() / "m.safetensors"),)
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "--models-root" in capsys.readouterr().out
    rc, _, err = run_cli(capsys, "bench", "--config", config, "--models-root", models, "-q")
    assert rc == 2 and "m.safetensors" in err  # got past the placeholder, to the missing file


# --- 2. one scorer spec ------------------------------------------------------------------------
class _Fusion(oodlens.Scorer):
    """A test scorer whose parameter is a list of other specs (as the fusion scorer's)."""

    name = "fusion_test"
    requires = frozenset({"logits"})

    def __init__(self, members=(), weights=None) -> None:
        self.members, self.weights = members, weights

    def _score(self, outputs):
        return outputs.logits.max(axis=1)


class _FusionPlugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(_Fusion)


@pytest.fixture
def fusion_plugin():
    name = oodlens.register_plugin(_FusionPlugin(), name="fusion-test")
    yield
    oodlens.unregister_plugin(name)


def test_2_a_parameter_can_hold_other_specs(fusion_plugin):
    spec = registry.parse_scorer_spec("fusion_test:members=[knn:k=10,msp],weights=[0.5,0.5]")
    knn, msp = spec.params["members"]
    assert (knn.name, dict(knn.params), msp.name) == ("knn", {"k": 10}, "msp")
    assert spec.params["weights"] == (0.5, 0.5)
    grid = registry.parse_scorer_spec("fusion_test:members=[msp]|[energy,msp]")
    assert [[m.name for m in g] for g in grid.grid["members"]] == [["msp"], ["energy", "msp"]]
    with pytest.raises(ValueError, match="nested spec 'knn:k=1|5' has a search grid"):
        registry.parse_scorer_spec("fusion_test:members=[knn:k=1|5]")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("logit_kde:mode=class_conditional,mode=marginal", "sets 'mode' twice"),
        ("msp:temperature=", "a value is empty"),
        ("msp:temperature=[1", "'[' without its ']'"),
        ("msp:temperature=1]", "']' without its '['"),
        ("msp:[[[[[[1]]]]]]", "nests lists deeper than 4 levels"),
        ("msp:" + "a=1," * 15_000, "is longer than the 1000 allowed"),
        ("knn:k", "expected key=value, got 'k'"),
        ("label", "Unknown scorer 'label'"),
        ("msp,energy", "is not one scorer: give several as separate specs (msp energy)"),
        (":k=1", "has no scorer name"),
    ],
)
def test_2_bad_specs_are_one_clear_error(text, expected):
    with pytest.raises((ValueError, KeyError)) as info:
        registry.parse_scorer_spec(text)
    assert expected in str(info.value) and "Recursion" not in type(info.value).__name__


def test_2_a_spec_is_parsed_once_per_run(tmp_path, tiny_ckpt, monkeypatch):
    calls = []
    real = registry._parse

    def counting(text, depth):
        if depth == 0:
            calls.append(text)
        return real(text, depth)

    monkeypatch.setattr(registry, "_parse", counting)
    result = run_benchmark(
        models=("resnet18",), checkpoints=(str(tiny_ckpt),), id="digits:0-2", img_size=16,
        ood=(OODSet("noise", "noise:gaussian,n=20,size=16"),), cache_dir=str(tmp_path / "c"),
        scorers=("msp", "knn:k=1|3"), tune=True, progress=False,
        ood_val=(OODSet("uniform", "noise:uniform,n=20,size=16"),),
    )  # fmt: skip
    assert sorted(calls) == ["knn:k=1|3", "msp"]
    assert set(result.table.scorer) == {"msp", "knn:k=1|3"} and not result.failures


def test_2_compare_refuses_a_column_that_is_not_a_scorer(tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "run"
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
    assert rc == 0
    rc, _, err = run_cli(capsys, "compare", out, "--scorers", "label", "msp")
    assert rc == 2 and "['label'] is not a scorer of" in err and "its scorers: ['msp']" in err


# --- 3. one metric catalogue ---------------------------------------------------------------
def test_3_fixed_threshold_columns_reach_the_summary_markdown_and_terminal(
    tmp_path, capsys, tiny_ckpt
):
    out = tmp_path / "run"
    argv = bench_args(tiny_ckpt, tmp_path / "c", "--threshold", "0.5", "--out", out)
    rc, stdout, _ = run_cli(capsys, *argv)
    assert rc == 0 and "ood_rejected@fixed" in stdout
    assert "ood_rejected@fixed" in (out / "results.md").read_text()
    summary = pd.read_csv(out / "results.csv")
    assert {"ood_rejected@fixed", "id_errors_rejected@fixed"} <= set(summary.columns)
    assert "id_errors_rejected@fixed" in (out / "results.md").read_text()


def _result(table: pd.DataFrame) -> oodlens.BenchmarkResult:
    cfg = BenchmarkConfig(ood=(OODSet("noise", "noise:uniform"),))
    return oodlens.BenchmarkResult(cfg, table, [], {}, {})


def test_3_a_column_added_to_the_catalogue_appears_everywhere(tmp_path, monkeypatch):
    row = {"backbone": "b", "seed": -1, "scorer": "msp", "ood": "noise", "group": "far"}
    table = pd.DataFrame([{**row, "auroc": 0.9, "my_score": 0.25}])
    assert "my_score" not in _result(table).summary().columns  # not a metric: not summarised
    monkeypatch.setitem(METRICS, "my_score", Metric("my_score", True, "a test", table=True))
    result = _result(table)
    assert result.summary()["my_score"].tolist() == [0.25]
    assert "my_score" in to_markdown(result.summary())
    result.save(tmp_path / "r", formats=("md", "csv"), plots=False)
    assert "| 25.00 |" in (tmp_path / "r" / "results.md").read_text()
    assert pd.read_csv(tmp_path / "r" / "results.csv")["my_score"].tolist() == [0.25]
    assert metric_columns(["my_score", "auroc", "backbone"]) == ["auroc", "my_score"]


# --- 4. report writers as a table ------------------------------------------------------------
def test_4_report_formats_are_a_table(tmp_path, monkeypatch):
    written = []

    def write(result, out, ctx):
        (out / "mine.txt").write_text(f"{len(ctx.summary)} rows")
        written.append(out)

    monkeypatch.setitem(REPORT_FORMATS, "mine", ReportFormat("mine", write, "a test format"))
    row = {"backbone": "b", "seed": -1, "scorer": "msp", "ood": "noise", "group": "far"}
    out = _result(pd.DataFrame([{**row, "auroc": 0.9}])).save(tmp_path / "r", formats=("mine",))
    assert (out / "mine.txt").read_text() == "1 rows" and (out / "results.json").is_file()
    with pytest.raises(ValueError, match=r"Unknown format\(s\) \['nope'\]"):
        _result(pd.DataFrame([{**row, "auroc": 0.9}])).save(tmp_path / "s", formats=("nope",))


def test_4_markdown_escapes_a_pipe_in_a_set_name(tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "run"
    argv = bench_args(tiny_ckpt, tmp_path / "c", "--out", out)
    argv[argv.index("--ood") + 1] = "far:a|b=noise:gaussian,n=20,size=16"
    rc, stdout, _ = run_cli(capsys, *argv)
    assert rc == 0
    for text in (stdout, (out / "results.md").read_text()):
        rows = [line for line in text.splitlines() if line.startswith("|")]
        cells = {len(re.split(r"(?<!\\)\|", line)) for line in rows}
        assert len(cells) <= 2  # the ID table and the per-set table, each rectangular
        assert any("a\\|b" in line for line in rows)


def test_4_names_with_dollars_are_drawn_literally(tmp_path):
    rng = np.random.default_rng(0)
    name = r"a$\notacommand$b"  # mathtext would fail on it ("Unknown symbol")
    scores = {r"msp$_$": {"id": rng.normal(1, 1, 50), name: rng.normal(0, 1, 50)}}
    path = plot_roc(scores, [name], r"title $x", tmp_path / "roc.png")
    assert path.stat().st_size > 0


# --- 5. protocols as validated data --------------------------------------------------------
class _ProtocolPlugin:
    def __init__(self, protocols: dict) -> None:
        self.protocols = protocols

    @oodlens.hookimpl
    def register_protocols(self, register):
        for name, protocol in self.protocols.items():
            register(name, protocol, "a test protocol")


@pytest.fixture
def protocols():
    names = []

    def add(protocols: dict) -> None:
        names.append(oodlens.register_plugin(_ProtocolPlugin(protocols), name=f"p{len(names)}"))

    yield add
    for name in names:
        oodlens.unregister_plugin(name)


def test_5_a_protocol_is_checked_when_it_is_registered(protocols, capsys):
    good = {"id": {"folders": ["toy"]}, "ood": [{"name": "n", "group": "far", "folders": ["n"]}]}
    bad = {"id": {"folders": ["toy"]}, "ood": [{"group": "far", "folders": ["n"]}]}
    wrong_group = {
        "id": {"folders": ["x"]},
        "ood": [{"name": "n", "group": "middle", "folders": []}],
    }
    with pytest.warns(registry.PluginLoadWarning) as warned:
        protocols({"toy_ok": good, "toy_bad": bad, "toy_group": wrong_group})
        names = registry.list_protocols()
    messages = " ".join(str(w.message) for w in warned)
    assert "toy_ok" in names and "toy_bad" not in names and "toy_group" not in names
    assert "protocol 'toy_bad': ood[0]: missing ['name']" in messages
    assert "group='middle' is not valid" in messages
    rc, out, _ = run_cli(capsys, "protocols")
    assert rc == 0 and "toy_ok" in out and "cifar10" in out and "openood" in out


def test_5_only_openood_protocols_get_openood_tables(tmp_path, capsys, protocols, tiny_ckpt):
    root = tmp_path / "data"
    digits = oodlens.load_dataset("digits:0-2")
    for split in ("train", "test"):
        source = oodlens.load_dataset(f"digits:0-2@{split}")
        for i in range(len(source)):
            folder = root / "toy" / split / digits.classes[source.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            source.loader(i).save(folder / f"{i}.png")
    image_folder(root / "far_set", {"x": 15}, size=8)
    protocols(
        {
            "toy": {
                "id": {"folders": ["toy"]},
                "ood": [{"name": "far_set", "group": "far", "folders": ["far_set"]}],
            }
        }
    )
    argv = [
        "bench", "--protocol", "toy", "--data-root", root, "--model", "resnet18",
        "--checkpoint", tiny_ckpt, "--img-size", "16", "--scorers", "msp", "--cache-dir",
        tmp_path / "c", "-q",
    ]  # fmt: skip
    rc, stdout, _ = run_cli(capsys, *argv)
    assert rc == 0 and "OOD detection, per set:" in stdout and "near AUROC" not in stdout


# --- 6. silent-wrong results -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["id", "id_test", "val", "calib", "ID", "mean", "ood_val:x"])
def test_6_an_ood_set_may_not_take_the_name_of_an_id_split(tmp_path, capsys, tiny_ckpt, name):
    argv = bench_args(tiny_ckpt, tmp_path / "c")
    argv[argv.index("--ood") + 1] = f"far:{name}=noise:gaussian,n=20,size=16"
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and f"OOD set name {name!r} is reserved" in one_line_error(err)


def test_6_two_checkpoints_of_one_architecture_are_two_rows(
    tmp_path, capsys, tiny_ckpt, second_ckpt
):
    base = ["--id", "digits:0-2", "--img-size", "16", "--ood", NOISE, "--scorers", "msp"]
    common = [*base, "--cache-dir", tmp_path / "c", "-q", "--model", "resnet18"]
    out = tmp_path / "two"
    argv = ["bench", *common, "--checkpoint", tiny_ckpt, "--checkpoint", second_ckpt, "--out", out]
    rc, _, _ = run_cli(capsys, *argv)
    summary = pd.read_csv(out / "results.csv")
    assert rc == 0
    assert sorted(summary.backbone.unique()) == [
        "resnet18 (other.safetensors)",
        "resnet18 (tiny.safetensors)",
    ]
    assert set(summary.n_seeds) == {1}
    seeds = tmp_path / "seeds"
    argv = [
        "bench", *common, "--checkpoint", f"mine={tiny_ckpt}", "--checkpoint",
        f"mine={second_ckpt}", "--out", seeds,
    ]  # fmt: skip
    rc, _, _ = run_cli(capsys, *argv)
    summary = pd.read_csv(seeds / "results.csv")
    assert rc == 0 and set(summary.backbone) == {"mine"} and set(summary.n_seeds) == {2}


def test_6_placeholders_are_values_not_text(tmp_path):
    root = tmp_path / "data #1: 'x'"
    image_folder(root / "set", {"a": 2, "b": 2})
    config = write_yaml(
        tmp_path, "id: '{data_root}/set'\nood: [{name: n, spec: '{data_root}/set'}]\n"
    )
    cfg = load_config(config, data_root=root)
    assert cfg.id == str(root.resolve() / "set") and cfg.ood[0].spec == cfg.id
    assert len(oodlens.load_dataset(cfg.id)) == 4


def test_6_merge_keeps_a_column_telling_the_runs_apart(tmp_path, capsys, tiny_ckpt):
    first, second = tmp_path / "a" / "run", tmp_path / "b" / "run"
    for out in (first, second):
        rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
        assert rc == 0
    merged = merge_runs([first, second])
    assert merged.columns[0] == "run" and set(merged.run) == {str(first), str(second)}
    other = tmp_path / "other"
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", other))
    merged = merge_runs([first, other])
    assert set(merged.run) == {"run", "other"}
    rc, stdout, _ = run_cli(capsys, "merge", first, other, "--out", tmp_path / "m")
    assert rc == 0 and "| run | backbone | scorer |" in stdout
    assert "run" in pd.read_csv(tmp_path / "m" / "merged.csv").columns


def test_6_vim_on_too_few_rows_names_the_minimum():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(20, 64))
    w, b = rng.normal(size=(5, 64)), rng.normal(size=5)
    train = oodlens.Outputs(logits=f @ w.T + b, labels=np.arange(20) % 5, features=f,
                            head_weight=w, head_bias=b)  # fmt: skip
    with pytest.raises(ValueError, match=r"the 20 training rows span 20 dimension.*at least 33"):
        oodlens.create_scorer("vim", dim=32).fit(train)
    oodlens.create_scorer("vim", dim=16).fit(train)  # fewer dimensions than rows: fine


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"delta": float("nan")}, "delta=nan is not valid"),
        ({"delta": 0}, "delta=0 is not valid"),
        ({"delta": 1.0}, "delta=1.0 is not valid"),
        ({"ties": "random"}, "ties='random' is not valid; it must be one of 'conservative'"),
    ],
)
def test_6_conformal_p_values_refuse_bad_options(kwargs, expected):
    with pytest.raises(oodlens.InvalidParameterError, match=re.escape(expected)):
        conformal_p_values(np.arange(5.0), np.arange(3.0), **kwargs)


# --- 7. conformal details ------------------------------------------------------------------
def _max_logit_rejector(**kwargs) -> ConformalRejector:
    scorer = oodlens.create_scorer("max_logit").fit(synthetic_outputs(100, seed=0))
    return ConformalRejector(scorer, **kwargs)


def test_7_randomised_ties_draw_fresh_uniforms_at_every_call():
    """One calibration set of 19 rows and one row below all of them, tested 4000 times one
    row at a time: p = U/20, so it is rejected at alpha = 0.01 when U <= 0.2, a fifth of the
    calls. Re-seeding at every call made it all or none."""
    rejector = _max_logit_rejector(ties="randomized", random_state=3)
    calib = synthetic_outputs(19, seed=1)
    rejector.calibrate(calib)
    low = oodlens.Outputs(logits=np.full((1, calib.n_classes), -50.0))
    rejected = [bool(rejector.reject(low, 0.01)[0]) for _ in range(4000)]
    assert 0.17 < np.mean(rejected) < 0.23
    again = _max_logit_rejector(ties="randomized", random_state=3).calibrate(calib)
    assert [bool(again.reject(low, 0.01)[0]) for _ in range(4000)] == rejected  # seeded


def test_7_calibrate_scores_is_public_and_checks_its_rows():
    rejector = _max_logit_rejector()
    calib = synthetic_outputs(50, seed=4)
    scores = rejector.scorer.score(calib)
    rejector.calibrate_scores(scores, rows=calib)
    test = synthetic_outputs(10, seed=5)
    expected = conformal_p_values(scores, rejector.scorer.score(test))
    np.testing.assert_array_equal(rejector.p_values(test), expected)
    with pytest.raises(ValueError, match="finite scores"):
        rejector.calibrate_scores(np.array([1.0, np.nan]))
    fitted = ConformalRejector(oodlens.create_scorer("knn", k=2).fit(calib))
    with pytest.raises(ValueError, match="used to fit the scorer"):
        fitted.calibrate_scores(scores, rows=calib)


class _ModelAware(oodlens.Scorer):
    """Scores with a number it takes from the model inputs (as ODIN's passes would)."""

    name = "model_aware_test"
    requires = frozenset({"logits", "model"})

    def _score(self, outputs, model):
        return outputs.logits.max(axis=1) + model.model


def test_7_reject_and_flag_batch_take_model_inputs():
    from oodlens.scorers.base import ModelInputs

    def inputs(outputs, offset):
        return ModelInputs(offset, lambda: iter(()), "cpu", (1.0,), outputs.n_samples)

    train = synthetic_outputs(50, seed=0)
    scorer = _ModelAware().fit(train, model=inputs(train, 0.0))
    calib, test = synthetic_outputs(40, seed=1), synthetic_outputs(8, seed=2)
    rejector = ConformalRejector(scorer).calibrate(calib, model=inputs(calib, 0.0))
    assert not rejector.reject(test, 0.05, model=inputs(test, 0.0)).all()
    assert rejector.reject(test, 0.05, model=inputs(test, -1000.0)).all()
    assert rejector.flag_batch(test, 0.1, model=inputs(test, -1000.0)).all()
    with pytest.raises(oodlens.MissingOutputsError, match="requires 'model'"):
        rejector.reject(test, 0.05)


# --- 8. scorers on degenerate rows, clean docstrings ---------------------------------------
@pytest.mark.parametrize("spec", ["ash:variant=s", "ash:variant=p", "ash:variant=b", "scale"])
@pytest.mark.parametrize("device", [None, "cpu"])
def test_8_activation_shaping_gives_a_finite_score_to_an_all_zero_row(spec, device):
    from oodlens.compute import compute_device

    def relu(o):
        return oodlens.Outputs(
            logits=o.logits, labels=o.labels, features=np.maximum(o.features, 0),
            head_weight=o.head_weight, head_bias=o.head_bias,
        )  # fmt: skip

    train, test = relu(synthetic_outputs(200, seed=0)), relu(synthetic_outputs(4, seed=1))
    features = np.array(test.features)
    features[0] = 0.0
    zero = dataclasses.replace(test, features=features)
    with compute_device(device):
        scores = registry.create_scorer_from_spec(spec).fit(train).score(zero)
    # the zero row keeps zero activations: its logits are the bias, its score their energy
    bias = np.asarray(test.head_bias, np.float64)
    assert np.isfinite(scores).all()
    assert scores[0] == pytest.approx(np.log(np.exp(bias).sum()))


def _documented():
    import oodlens_feature_scorers
    import oodlens_model_scorers

    for module in (oodlens, oodlens_feature_scorers, oodlens_model_scorers):
        yield module.__name__, module
        for name, obj in vars(module).items():
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
    for entry in registry.list_entries("scorer"):
        yield entry.name, entry.obj


def test_8_docstrings_hold_no_control_characters():
    bad = {
        name: sorted({repr(c) for c in doc if ord(c) < 32 and c not in "\n\t"})
        for name, obj in _documented()
        if (doc := inspect.getdoc(obj))
    }
    assert {k: v for k, v in bad.items() if v} == {}
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("plugins/*/src/**/*.py")]:
        text = path.read_text()
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", text), path


# --- 9. messages that are right ------------------------------------------------------------
def test_9_an_empty_class_folder_is_the_dataset_s_problem(tmp_path, capsys, tiny_ckpt):
    root = tmp_path / "data"
    image_folder(root / "train", {"a": 3, "b": 3, "c": 0})
    image_folder(root / "test", {"a": 2, "b": 2, "c": 2})
    with pytest.raises(ValueError) as info:
        oodlens.load_dataset(f"{root}@train")
    message = str(info.value)
    assert "class folder(s) ['c'] hold no images" in message and "model" not in message
    rc, _, err = run_cli(capsys, "train", "--data", root, "--img-size", "16", "--epochs", "1",
                         "--out", tmp_path / "m.safetensors", "-q")  # fmt: skip
    assert rc == 2 and "['c'] hold no images" in err


def test_9_class_names_in_other_unicode_forms_are_one_class(tmp_path):
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    root = tmp_path / "data"
    image_folder(root / "train", {nfd: 3, "tea": 3})
    image_folder(root / "test", {nfc: 2, "tea": 2})
    train = oodlens.load_dataset(f"{root}@train")
    test = align_classes(oodlens.load_dataset(f"{root}@test"), train.classes, "ID test")
    assert train.classes == (nfc, "tea") and test.classes == train.classes
    assert test.labels.tolist() == [0, 0, 1, 1]
    both = tmp_path / "both"
    image_folder(both, {nfd: 1, nfc: 1})
    if len(list(both.iterdir())) == 2:  # the file system keeps both forms apart
        with pytest.raises(ValueError, match="differ only in their Unicode form"):
            oodlens.load_dataset(str(both))


def test_9_ood_paths_may_hold_an_at_sign(tmp_path, capsys, tiny_ckpt):
    folder = image_folder(tmp_path / "with@sign" / "photos", {"x": 6}, size=16)
    ood = parse_ood_spec(f"far={folder}")
    assert ood == OODSet("photos", str(folder), "far")
    assert len(oodlens.load_dataset(str(folder))) == 6
    assert len(oodlens.load_dataset(f"{folder}@all")) == 6
    with pytest.raises(ValueError, match="Unknown split 'tset'"):
        oodlens.load_dataset("digits:0-2@tset")
    argv = bench_args(tiny_ckpt, tmp_path / "c")
    argv[argv.index("--ood") + 1] = f"far={folder}"
    rc, stdout, _ = run_cli(capsys, *argv)
    assert rc == 0 and "photos" in stdout


# --- 10. tests never assert timings ------------------------------------------------------------
def test_10_no_test_asserts_a_timing():
    """The same pattern the project's before-stop check looks for."""
    timed = re.compile(r"assert[^#\n]*\b(elapsed|seconds|secs|best|dt|took)\b[^#\n]*<")
    files = [*ROOT.glob("tests/*.py"), *ROOT.glob("plugins/*/tests/*.py")]
    assert [str(p) for p in files if timed.search(p.read_text())] == []


def test_results_json_records_the_extraction_options(tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "run"
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
    payload = json.loads((out / "results.json").read_text())
    assert rc == 0 and payload["config"]["batch_size"] == 256
    assert payload["info"]["preprocess"] == "pil"


# === "Trustworthy numbers II" (issue 22): the cache, output folders, decoding ===============
def _bench(tiny_ckpt: Path, cache: Path, **kw) -> oodlens.BenchmarkResult:
    kw.setdefault("ood", (OODSet("noise", "noise:gaussian,n=20,size=16"),))
    return run_benchmark(
        models=("resnet18",), checkpoints=(str(tiny_ckpt),), id="digits:0-2", img_size=16,
        cache_dir=str(cache), scorers=("msp", "vim:dim=8"), progress=False, **kw,
    )  # fmt: skip


def _metrics(result: oodlens.BenchmarkResult) -> pd.DataFrame:
    return result.table.drop(columns=["threshold"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_ckpt):
    """A run on a fresh cache: the reference every damaged-then-repaired rerun must equal."""
    cache = tmp_path_factory.mktemp("clean") / "cache"
    return _bench(tiny_ckpt, cache), cache


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16])
                         + data[middle + 16 :])  # fmt: skip
    elif how == "truncate":
        path.write_bytes(data[:-3])
    elif how == "zero":
        path.write_bytes(b"")
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "zero", "delete"])
@pytest.mark.parametrize(
    "name", ["logits.bin", "features.bin", "labels.bin", "head_weight.npy", "head_bias.npy",
             "meta.json"]
)  # fmt: skip
def test_ii_1_a_damaged_cache_file_is_detected_and_extracted_again(
    tmp_path, tiny_ckpt, clean_run, caplog, name, how
):
    reference, clean_cache = clean_run
    cache = tmp_path / "cache"
    import shutil

    shutil.copytree(clean_cache, cache)
    entries = sorted((cache / "outputs").iterdir())
    for entry in entries:
        _damage(entry / name, how)
    with caplog.at_level("WARNING"):
        rerun = _bench(tiny_ckpt, cache)
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == len(entries)
    assert all("extracting again" in line and "\n" not in line for line in damaged)
    assert rerun.info["cache_misses"] == len(entries)
    pd.testing.assert_frame_equal(_metrics(rerun), _metrics(reference))
    assert Cache(cache).verify() == []


def test_ii_1_a_missing_meta_field_and_a_changed_byte_with_the_old_mtime(
    tmp_path, tiny_ckpt, clean_run, capsys
):
    import os
    import shutil

    reference, clean_cache = clean_run
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    first, second = sorted((cache / "outputs").iterdir())[:2]
    meta = json.loads((first / "meta.json").read_text())
    del meta["features_dtype"]
    (first / "meta.json").write_text(json.dumps(meta))
    # bit rot: a changed byte with the modification time put back is invisible to the cheap
    # check of every load; `oodlens cache verify` reads every byte and finds it
    stat = (second / "logits.bin").stat()
    _damage(second / "logits.bin", "flip")
    os.utime(second / "logits.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rc, out, _ = run_cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert rc == 1 and "lacks ['features_dtype']" in out and "does not match its checksum" in out
    rc, out, _ = run_cli(capsys, "cache", "verify", "--cache-dir", cache, "--repair")
    assert rc == 0 and out.count("(removed)") == 2
    rerun = _bench(tiny_ckpt, cache)
    assert rerun.info["cache_misses"] == 2
    pd.testing.assert_frame_equal(_metrics(rerun), _metrics(reference))
    rc, out, _ = run_cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert rc == 0 and ", 0 damaged." in out


def test_ii_1_entries_of_the_old_format_are_not_trusted(tmp_path):
    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "meta.json").write_text(
        json.dumps({"format": "oodlens-outputs-folder", "format_version": 1, "n": 0})
    )
    with pytest.raises(ValueError, match="unknown Outputs folder format"):
        oodlens.Outputs.load_dir(folder)
    assert EXTRACTION_VERSION == 3


_WRITER = """
import sys, time
from oodlens.files import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "logits.bin").write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(120)
"""


def _writer(target: Path):
    """A process writing an entry through ``atomic_dir``, stopped inside it; returns the
    process and its temporary folder."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    return proc, Path(proc.stdout.readline().strip())


def test_ii_2_temporaries_of_killed_runs_go_those_of_live_writers_stay(tmp_path, tiny_ckpt):
    outputs = tmp_path / "cache" / "outputs"
    killed, stale = _writer(outputs / "a")
    killed.kill()  # as Ctrl-C cannot: no cleanup runs
    killed.wait()
    live, writing = _writer(outputs / "b")
    elsewhere = outputs / ".c.123-0badc0de.x1y2z3.tmp"  # another host's: never touched
    elsewhere.mkdir()
    try:
        assert stale.is_dir() and writing.is_dir()
        result = _bench(tiny_ckpt, tmp_path / "cache")  # a second run beside the live writer
        assert not result.failures and not stale.exists()
        assert (writing / "logits.bin").read_bytes() == b"partial" and elsewhere.is_dir()
    finally:
        live.kill()
        live.wait()
    _bench(tiny_ckpt, tmp_path / "cache")
    assert not writing.exists() and elsewhere.is_dir()
    assert not (outputs / "a").exists() and not (outputs / "b").exists()


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def test_ii_2_a_read_only_cache_holding_every_entry_is_usable(
    tmp_path, tiny_ckpt, clean_run, monkeypatch
):
    import shutil

    reference, clean_cache = clean_run
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    _bench(tiny_ckpt, cache)  # entries verified and stamped by a writable run
    before = _tree(cache)
    # the tests run as root, whom permissions do not stop: the cache says it is read-only
    monkeypatch.setattr(Cache, "writable", property(lambda self: False))
    rerun = _bench(tiny_ckpt, cache)
    assert _tree(cache) == before  # nothing written
    pd.testing.assert_frame_equal(_metrics(rerun), _metrics(reference))
    with pytest.raises(PermissionError, match="is read-only and holds no entry for"):
        _bench(tiny_ckpt, cache, ood=(OODSet("uniform", "noise:uniform,n=20,size=16"),))


def test_ii_2_a_cache_inside_the_report_folder_is_refused(tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "report"
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, out / "cache", "--out", out))
    assert rc == 2 and "is inside --out" in err and not out.exists()


def test_ii_3_a_rerun_keeps_the_user_s_files_byte_for_byte(tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "report"
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
    assert rc == 0 and (out / ".oodlens-manifest.json").is_file()
    notebook = out / "analysis.ipynb"
    notebook.write_bytes(b'{"cells": []}\x00\xff')
    (out / "paper" / "figs").mkdir(parents=True)
    (out / "paper" / "main.tex").write_text("\\section{Results}")
    (out / "paper" / "figs" / "roc.pdf").write_bytes(bytes(range(256)))
    (out / "paper" / "empty").mkdir()
    before = {p: p.read_bytes() for p in (notebook, *(out / "paper").rglob("*.*"))}
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
    assert rc == 0
    assert {p: p.read_bytes() for p in before} == before
    assert (out / "paper" / "empty").is_dir() and (out / "results.md").is_file()
    (out / "results.md").write_text("my own table")  # edited: now the user's
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
    assert rc == 2 and "results.md' was not written by oodlens (or was changed since)" in err
    assert (out / "results.md").read_text() == "my own table" and notebook.is_file()


def test_ii_3_an_earlier_report_without_manifest_keeps_the_user_s_files(
    tmp_path, capsys, tiny_ckpt
):
    out = tmp_path / "old"
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
    (out / ".oodlens-manifest.json").unlink()  # as written by an oodlens before manifests
    (out / "notes.txt").write_text("keep me")
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))
    assert rc == 0 and (out / "notes.txt").read_text() == "keep me"


def test_ii_3_single_file_outputs_never_replace_a_foreign_file(tmp_path, capsys, tiny_ckpt):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(photo)
    original = photo.read_bytes()
    argv = ["explain", photo, "--model", "resnet18", "--checkpoint", tiny_ckpt, "--img-size",
            "16", "--scorers", "--out"]  # fmt: skip
    rc, _, err = run_cli(capsys, *argv, photo, "-q")
    assert rc == 2 and "was not written by oodlens" in err and "--overwrite" in err
    assert photo.read_bytes() == original
    grid = tmp_path / "grid.png"
    assert run_cli(capsys, *argv, grid, "-q")[0] == 0
    assert run_cli(capsys, *argv, grid, "-q")[0] == 0  # its own output: replaced
    assert run_cli(capsys, *argv, photo, "-q", "--overwrite")[0] == 0
    runs = tmp_path / "run"
    assert run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", runs))[0] == 0
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "merged.csv").write_text("my,own\n1,2\n")
    rc, _, err = run_cli(capsys, "merge", runs, "--out", merged)
    assert rc == 2 and "merged.csv' exists and was not written by oodlens" in err
    assert (merged / "merged.csv").read_text() == "my,own\n1,2\n"
    assert run_cli(capsys, "merge", runs, "--out", merged, "--overwrite")[0] == 0
    assert run_cli(capsys, "merge", runs, "--out", merged)[0] == 0  # now its own


def test_ii_4_torchrun_ranks_with_other_arguments_stop_before_any_work(tmp_path, tiny_ckpt):
    import subprocess
    import sys

    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, sys\n"
        "from oodlens import cli\n"
        "size = '16' if os.environ['RANK'] == '0' else '8'\n"
        "sys.exit(cli.main(sys.argv[1:] + ['--batch-size', size]))\n"
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    argv = [str(a) for a in bench_args(tiny_ckpt, tmp_path / "c")]
    run = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", str(script), *argv],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode != 0
    assert "batch_size is 16 on rank 0 but 8 on rank 1" in run.stderr
    assert not (tmp_path / "c" / "outputs").exists()  # nothing extracted


def test_ii_5_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.fromarray(ramp).save(folder / "ramp.png")
    pixels = np.asarray(oodlens.load_dataset(str(folder)).loader(0))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    assert (pixels == 255).mean() < 0.01  # clipped at 255, 99.6% would be


def test_ii_5_jpeg_orientation_is_applied_everywhere(tmp_path):
    from oodlens.datasets import files_source

    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = (255, 0, 0)  # red on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.fromarray(image).save(folder / "p.jpg", exif=exif, quality=95)
    for source in (oodlens.load_dataset(str(folder)), files_source([folder / "p.jpg"])):
        shown = np.asarray(source.loader(0))
        assert shown.shape == (40, 20, 3)  # portrait, as a viewer shows it
        assert shown[:15, :, 0].mean() > 200 and shown[25:, :, 0].mean() < 60  # red on top


def test_ii_6_half_precision_checkpoints_load(tmp_path, tiny_ckpt):
    import torch
    from safetensors.torch import save_file

    from oodlens.backbones import create_backbone, load_checkpoint

    state, config = load_checkpoint(tiny_ckpt)
    reference, _ = create_backbone("resnet18", checkpoint=str(tiny_ckpt))
    x = torch.rand(4, 3, 16, 16)
    for dtype in (torch.float16, torch.bfloat16):
        half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        plain = tmp_path / f"{dtype}.pt"
        torch.save(half, plain)
        meta = {"oodlens_config": json.dumps(dataclasses.asdict(config))}
        ours = tmp_path / f"{dtype}.safetensors"
        save_file({k: v.contiguous() for k, v in half.items()}, str(ours), metadata=meta)
        for path in (plain, ours):
            model, _ = create_backbone("resnet18", checkpoint=str(path), num_classes=3)
            assert next(model.parameters()).dtype == torch.float32
            with torch.inference_mode():
                torch.testing.assert_close(model(x), reference(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "config,expected",
    [
        ("{not json", "stores an oodlens_config that is not JSON"),
        ('{"model": "resnet18", "num_classes": "2"}', "num_classes='2' is not valid"),
        ('{"model": "resnet18"}', "it needs model and num_classes"),
        ('{"model": "resnet18", "num_classes": 2, "colour": 1}', "unknown key(s) ['colour']"),
    ],
)
def test_ii_7_a_checkpoint_config_of_the_wrong_shape_is_named(tmp_path, capsys, config, expected):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"oodlens_config": config})
    with pytest.raises(ValueError, match=re.escape(expected)):
        oodlens.create_backbone("resnet18", checkpoint=str(path))
    rc, _, err = run_cli(capsys, "bench", "--model", "resnet18", "--checkpoint", path, "-q",
                         "--cache-dir", tmp_path / "c")  # fmt: skip
    assert rc == 2 and expected in one_line_error(err) and str(path) in err


def test_ii_7_compare_names_a_corrupt_scores_file_and_too_few_resamples(
    tmp_path, capsys, tiny_ckpt
):
    out = tmp_path / "run"
    assert run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out))[0] == 0
    rc, _, err = run_cli(capsys, "compare", out, "--scorers", "msp", "msp", "--resamples", "0")
    assert rc == 2 and "resamples=0 is not valid" in one_line_error(err)
    (out / "scores.csv.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    rc, _, err = run_cli(capsys, "compare", out, "--scorers", "msp", "energy")
    assert rc == 2 and "is not a readable scores file" in one_line_error(err)
