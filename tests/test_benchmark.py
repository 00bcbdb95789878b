"""The benchmark harness end to end: digits, a generated image folder, the cache, reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import oodlens
from oodlens import backbones, extract
from oodlens.bench import BenchmarkConfig, OODSet, expand_scorers, load_config, run_benchmark
from oodlens.cache import Cache

pytestmark = pytest.mark.slow


def test_digits_table_is_tidy_and_right(digits_result):
    t = digits_result.table
    scorers = ["msp", "energy", "max_logit", "logit_kde", "logit_kde:mode=class_conditional"]
    assert list(t.scorer.unique()) == scorers
    for s in scorers:
        assert list(t[t.scorer == s].ood) == ["digits5-9", "noise", "near", "far", "mean"]
    for col in (
        "auroc",
        "aupr_in",
        "aupr_out",
        "fpr95",
        "fpr95_ood_recall",
        "id_accuracy",
        "ood_rejected",
    ):
        assert t[col].between(0, 1).all(), col
    # every number recomputed independently from the kept scores
    run = digits_result.runs[0]
    for s in scorers:
        sc = run.scores[s]
        y = np.r_[np.ones(len(sc["id"])), np.zeros(len(sc["digits5-9"]))]
        row = t[(t.scorer == s) & (t.ood == "digits5-9")].iloc[0]
        assert row.auroc == pytest.approx(
            roc_auc_score(y, np.r_[sc["id"], sc["digits5-9"]]), abs=1e-12
        )
        assert row.id_accuracy == pytest.approx(run.id_correct.mean())
        near = t[(t.scorer == s) & (t.ood == "mean")].iloc[0]
        per_set = t[(t.scorer == s) & t.ood.isin(["digits5-9", "noise"])]
        assert near.auroc == pytest.approx(per_set.auroc.mean())


def test_digits_scores_are_what_the_scorers_give(digits_result, cache_dir):
    """The harness's scores equal a scorer fitted by hand on the cached outputs."""
    cache = Cache(cache_dir)
    folders = sorted(p for p in (cache_dir / "outputs").iterdir() if not p.name.startswith("."))
    # this run's id train, val, calib, id test and two OOD sets; other tests of the session
    # may have added entries of their own to the shared cache
    assert len(folders) >= 6
    run = digits_result.runs[0]
    n_test = len(run.id_correct)
    tests = [o for o in map(oodlens.Outputs.load_dir, folders) if o.n_samples == n_test]
    same = [
        o
        for o in tests
        if np.allclose(oodlens.functional.msp(o.logits), run.scores["msp"]["id"], 1e-7, 1e-12)
    ]
    assert same, f"none of the {len(tests)} cached outputs of {n_test} rows gives the MSP scores"
    assert cache.directory == cache_dir


def test_logit_kde_on_digits_is_robustly_better_than_chance(digits_result):
    """Issue 3: logit-KDE vs MSP and energy on digits 0-4 vs 5-9 (numbers go in docs)."""
    t = digits_result.table.set_index(["scorer", "ood"])
    for s in ("msp", "energy", "logit_kde", "logit_kde:mode=class_conditional"):
        for ood in ("digits5-9", "noise"):
            assert t.loc[(s, ood), "auroc"] > 0.6, (s, ood)
    for mode in ("logit_kde", "logit_kde:mode=class_conditional"):
        kde = digits_result.runs[0].scores[mode]
        assert all(np.isfinite(v).all() and (v >= 0).all() for v in kde.values())
        for ood in ("digits5-9", "noise"):
            assert np.median(kde["id"]) > np.median(kde[ood]), (mode, ood)  # ID is denser


class _Counter:
    def __init__(self):
        self.calls = 0
        self.images = 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        self.images += inputs[0].shape[0]


def test_one_forward_pass_and_cache_hits(digits_result, cache_dir, digits_train, monkeypatch):
    counter = _Counter()
    real = extract.create_backbone

    def counted(*args, **kwargs):
        model, cfg = real(*args, **kwargs)
        model.conv1.register_forward_hook(counter)
        return model, cfg

    monkeypatch.setattr(extract, "create_backbone", counted)
    # a fresh cache for outputs, the trained checkpoint reused: every set extracted exactly once
    import shutil

    shutil.rmtree(cache_dir / "outputs")
    # output-based scorers only ("all"): model-aware ones run their own passes by design
    scorers = ("all", "logit_kde:mode=class_conditional")
    r1 = run_benchmark(
        cache_dir=str(cache_dir),
        train=digits_train,
        progress=False,
        batch_size=100,
        scorers=scorers,
    )
    sizes = [
        len(oodlens.load_dataset(s)) for s in ("digits:0-4@train", "digits:0-4@test", "digits:5-9")
    ] + [500]
    assert counter.images == sum(sizes), "each image goes through the network exactly once"
    # one call per batch: the missing sets go through one DataLoader, one after another
    assert counter.calls == -(-sum(sizes) // 100)
    assert r1.info["cache_misses"] == 6 and r1.info["cache_hits"] == 0
    skipped = r1.info["not_applicable"]  # mcm: a resnet18 is not a CLIP model
    assert "mcm" in skipped
    assert list(r1.table.scorer.unique()) == [
        *(s.text for s in expand_scorers(["all"]) if s.text not in skipped),
        "logit_kde:mode=class_conditional",
    ]
    assert "odin" not in r1.table.scorer.unique()
    counter.calls = 0
    r2 = run_benchmark(
        cache_dir=str(cache_dir), train=digits_train, progress=False, scorers=scorers
    )
    assert counter.calls == 0 and r2.info["cache_hits"] == 6
    pd.testing.assert_frame_equal(r1.table, r2.table)


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    from oodlens import outputs as outputs_module

    cache = Cache(tmp_path)
    out = oodlens.Outputs(logits=np.random.default_rng(0).normal(size=(50, 3)))
    key = cache.key({"x": 1})
    # a leftover partial temp folder (as after a kill) is never read
    (tmp_path / "outputs" / f".{key}.xyz.tmp").mkdir(parents=True)
    assert cache.get_outputs(key) is None

    # an interrupted write leaves no entry behind
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs_module.OutputsWriter, "finish", boom)
    with pytest.raises(KeyboardInterrupt):
        cache.put_outputs(key, out)
    monkeypatch.undo()
    assert not cache.outputs_path(key).exists()
    assert cache.get_outputs(key) is None
    # a corrupt entry (disk trouble: a truncated file) is discarded, not trusted
    cache.put_outputs(key, out)
    logits = cache.outputs_path(key) / "logits.bin"
    logits.write_bytes(logits.read_bytes()[:100])
    assert cache.get_outputs(key) is None and not cache.outputs_path(key).exists()
    cache.put_outputs(key, out)
    back = cache.get_outputs(key)
    assert isinstance(back.logits, np.memmap)  # memory-mapped, not loaded
    np.testing.assert_allclose(back.logits, out.logits.astype(np.float32))
    assert Cache(tmp_path, enabled=False).get_outputs(key) is None


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    from oodlens.cache import default_cache_dir

    monkeypatch.setenv("OODLENS_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("OODLENS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "oodlens"


def test_reports_parse_back(digits_result, tmp_path):
    out = digits_result.save(tmp_path / "report")
    summary = digits_result.summary()
    back = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(
        back[summary.columns[:4]], summary[summary.columns[:4]].astype(back.dtypes[:4].to_dict())
    )
    np.testing.assert_allclose(back.auroc, summary.auroc)
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["id"] == "digits:0-4"
    assert {"torch", "timm", "numpy"} <= set(payload["versions"])
    assert len(payload["table"]) == len(digits_result.table)
    assert payload["figures"] == ["roc.png", "score_distributions.png", "risk_coverage.png"]
    for fig in payload["figures"]:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("OOD detection, metrics in % under the oodlens convention")
    text = "\n".join(md)
    id_part, set_part = text.split("OOD detection, per set:")
    assert "| backbone | scorer | id_accuracy | aurc" in id_part
    table = [line for line in set_part.splitlines() if line.startswith("|")]
    assert table[0].startswith("| backbone | scorer | ood | auroc")
    assert len({line.count("|") for line in table}) == 1
    assert "**" in (out / "results.md").read_text()
    tex = (out / "results.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    body = tex.split("\\toprule")[1].split("\\bottomrule")[0]
    rows = [r for r in body.split("\n") if r.strip().endswith("\\\\")]
    assert len({r.count("&") for r in rows}) == 1 and len(rows) == len(summary) + 1
    assert tex.count("{") == tex.count("}")
    assert "\\caption{OOD detection, metrics in \\% under the oodlens convention" in tex
    assert "\\textbf{" in tex and "logit\\_kde" in tex


def test_mean_std_over_seeds():
    from oodlens.bench import BenchmarkResult

    rows = [
        {
            "backbone": "m",
            "seed": s,
            "scorer": "msp",
            "ood": "x",
            "group": "far",
            "auroc": a,
            "fpr95": f,
        }
        for s, a, f in ((0, 0.8, 0.3), (1, 0.9, 0.1), (2, 1.0, 0.2))
    ]
    res = BenchmarkResult(BenchmarkConfig(), pd.DataFrame(rows), [], {}, {})
    s = res.summary().iloc[0]
    assert s.n_seeds == 3 and s.auroc == pytest.approx(0.9) and s.auroc_std == pytest.approx(0.1)
    from oodlens.bench.report import to_latex, to_markdown

    assert "90.00 ± 10.00" in to_markdown(res.summary())
    assert "90.00 $\\pm$ 10.00" in to_latex(res.summary())


def _write_folder(root, seed=0, n=24, corrupt=False):
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("stripes", "blobs")):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            img = np.zeros((24, 24, 3), np.uint8)
            if k == 0:
                img[:, ::4] = 255
                img[..., 0] = rng.integers(100, 255)
            else:
                cy, cx = rng.integers(6, 18, 2)
                img[cy - 4 : cy + 4, cx - 4 : cx + 4] = (0, 0, 255)
            Image.fromarray(img).save(d / f"{name}_{i}.png")
    if corrupt:
        (root / "blobs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def test_image_folder_end_to_end_with_checkpoint_and_corrupt_image(tmp_path):
    _write_folder(tmp_path / "id")
    ood = tmp_path / "ood"
    ood.mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(ood / f"n{i}.png")
    (ood / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    from oodlens.train import TrainConfig, train_model

    ckpt, summary = train_model(
        TrainConfig(model="resnet18", data=str(tmp_path / "id"), img_size=32, epochs=2),
        tmp_path / "m.safetensors",
        progress=False,
    )
    assert summary["n_train"] + summary["n_test"] == 48
    cfg = BenchmarkConfig(
        id=str(tmp_path / "id"),
        ood=(OODSet("noise-photos", str(ood), "far"),),
        checkpoints=(str(ckpt),),
        scorers=("msp", "logit_kde"),
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.0,
        calib_fraction=0.4,  # 10 test images: a large enough calib split
    )
    with pytest.raises(
        oodlens.datasets.CorruptImageError,
        match=r"(?s)1 unreadable image\(s\).*bad\.jpg.*--skip-corrupt",
    ):
        run_benchmark(cfg, progress=False)
    res = run_benchmark(cfg, progress=False, skip_corrupt=True)
    assert [p.endswith("bad.jpg") for p in next(iter(res.info["corrupt"].values()))] == [True]
    assert set(res.table.ood) == {"noise-photos", "far"}  # the far aggregate of one set
    assert res.runs[0].scores["msp"]["noise-photos"].shape == (20,)


def test_wrong_checkpoints(tmp_path):
    import torch

    model, cfg = backbones.create_backbone("resnet18", num_classes=3)
    good = backbones.save_checkpoint(model, cfg, tmp_path / "three.safetensors")
    with pytest.raises(ValueError, match="it has 3 classes but the model was built with 5"):
        backbones.create_backbone("resnet18", num_classes=5, checkpoint=good)
    with pytest.raises(ValueError, match="trained as 'resnet18', not 'resnet34'"):
        backbones.create_backbone("resnet34", checkpoint=good)
    state = model.state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"1 missing key\(s\) such as \['layer1.0.conv1.weight'\]"):
        backbones.create_backbone("resnet18", num_classes=3, checkpoint=tmp_path / "missing.pt")
    torch.save({"weights": object()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        backbones.create_backbone("resnet18", num_classes=3, checkpoint=tmp_path / "pickled.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a safetensors file .judged by its content"):
        backbones.create_backbone("resnet18", checkpoint=tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        backbones.create_backbone("resnet18", checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="Unknown timm model 'resnet1'. Did you mean"):
        backbones.create_backbone("resnet1", num_classes=3)
    # a plain torch state dict with a head is accepted and its class count inferred
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    m2, cfg2 = backbones.create_backbone("resnet18", checkpoint=tmp_path / "plain.pt")
    assert cfg2.num_classes == 3
    assert torch.equal(m2.fc.weight, model.fc.weight)


def test_extraction_matches_the_model(tmp_path):
    import torch

    torch.manual_seed(0)
    model, _ = backbones.create_backbone("resnet18", num_classes=5)
    source = oodlens.load_dataset("digits:0-4@test")
    tf, cfg = backbones.build_transform(model, 32)
    out = extract.extract_outputs(
        model, source, tf, tuple(cfg["input_size"]), batch_size=50, progress=False
    )
    x = torch.stack([tf(source.loader(i)) for i in range(10)])
    with torch.no_grad():
        np.testing.assert_allclose(out.logits[:10], model(x).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        out.features @ out.head_weight.T + out.head_bias, out.logits, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_array_equal(out.labels, source.labels)
    assert out.features.shape == (len(source), 512) and not model.training


@pytest.mark.parametrize(
    ("spec", "exc", "match"),
    [
        (
            "imagenet:val",
            oodlens.UnknownNameError,
            r"Unknown dataset 'imagenet'.*digits, noise, torchvision",
        ),
        ("/no/such/folder", FileNotFoundError, "does not exist"),
        ("digits:0-4@val", ValueError, "Unknown split 'val'"),
        ("digits:0-12", ValueError, r"do not exist; valid: 0-9"),
        ("digits:a-b", ValueError, "Cannot read classes"),
        ("noise:pink", ValueError, "Unknown noise 'pink'"),
        ("noise:gaussian,n=ten", ValueError, "must be integers"),
        ("noise:gaussian,colour=red", ValueError, r"Unknown option\(s\) \['colour'\]"),
        ("torchvision:CIFAR11", ValueError, "did you mean CIFAR10"),
    ],
)
def test_bad_dataset_specs(spec, exc, match):
    with pytest.raises(exc, match=match):
        oodlens.load_dataset(spec)


def test_dataset_specs_and_splits(tmp_path):
    a, b = oodlens.load_dataset("digits:0-4@train"), oodlens.load_dataset("digits:0-4@test")
    assert not set(a.ids) & set(b.ids) and len(a) + len(b) == len(
        oodlens.load_dataset("digits:0-4")
    )
    assert 0.15 < len(b) / (len(a) + len(b)) < 0.25
    assert oodlens.load_dataset("digits:0-4@test").ids == b.ids  # deterministic
    d = oodlens.load_dataset("digits:3+7")
    assert d.classes == ("3", "7") and set(d.labels) == {0, 1}
    n = oodlens.load_dataset("noise:uniform,n=7,size=9")
    assert len(n) == 7 and n.loader(0).size == (9, 9)
    assert np.array_equal(np.asarray(n.loader(3)), np.asarray(n.loader(3)))
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((5, 5, 3), i * 40, np.uint8)).save(flat / f"{i}.png")
    f = oodlens.load_dataset(str(flat))
    assert f.classes == ("flat",) and len(f) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        oodlens.load_dataset(str(tmp_path / "empty"))
    _write_folder(tmp_path / "split" / "train", n=3)
    _write_folder(tmp_path / "split" / "test", n=2)
    assert len(oodlens.load_dataset(str(tmp_path / "split") + "@test")) == 4


def test_config_files(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "id: digits:0-4\nmodels: [resnet18]\nscorers: [msp, energy]\nood:\n  - {name: n, spec: 'noise:uniform', group: far}\n"
    )
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.scorers == ("msp", "energy") and cfg.ood == (OODSet("n", "noise:uniform", "far"),)
    (tmp_path / "c.toml").write_text(
        '[benchmark]\nid = "digits:0-4"\nseeds = [0, 1]\n[[benchmark.ood]]\nname = "x"\nspec = "digits:5-9"\ngroup = "near"\n'
    )
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.seeds == (0, 1) and cfg.ood[0].group == "near"
    (tmp_path / "bad.yaml").write_text("modles: [resnet18]\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['modles'\]"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="group 'middle'"):
        OODSet("x", "noise:uniform", "middle")
    with pytest.raises(ValueError, match="one --model per --checkpoint"):
        BenchmarkConfig(models=("a", "b"), checkpoints=("x",))
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['epoch'\]"):
        BenchmarkConfig(train={"epoch": 3})


def test_bad_scorer_fails_before_any_work(tmp_path):
    with pytest.raises(oodlens.UnknownNameError, match="Unknown scorer 'mps'"):
        run_benchmark(scorers=("mps",), cache_dir=str(tmp_path), progress=False)
    with pytest.raises(TypeError, match="Unknown parameter 'mod'"):
        run_benchmark(scorers=("logit_kde:mod=marginal",), cache_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_training_on_a_corrupt_image_names_it_and_the_fix(tmp_path):
    _write_folder(tmp_path / "id", n=8)
    for i in range(3):
        (tmp_path / "id" / "blobs" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n no")
    from oodlens.train import TrainConfig, train_model

    with pytest.raises(
        oodlens.datasets.CorruptImageError,
        match=r"unreadable training image.*broken\d\.png.*never in training",
    ):
        train_model(
            TrainConfig(model="resnet18", data=str(tmp_path / "id"), img_size=16, epochs=1),
            tmp_path / "m.safetensors",
            progress=False,
        )
    assert not (tmp_path / "m.safetensors").exists()
