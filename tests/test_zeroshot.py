"""`mlx-aimv2 zeroshot` (issue 29): the prompt-ensemble classifier's scores on a labelled folder equal a
numpy computation of the same classifier from the model's own image and text embeddings; its bad
inputs are one line."""

import json
import shutil

import numpy as np
import pytest
from helpers import PHOTO, cli, one_clear_line

import mlx_aimv2
from mlx_aimv2.data.synth import write_labelled


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("colours"), 48, "colour", size=64, seed=3) / "train"


def reference(lit, folder, names, templates):
    """The classifier as CLIP's notebook builds it, written out plainly."""
    folders = sorted(d.name for d in folder.iterdir() if d.is_dir())
    W = []
    for name in names:
        t = lit.encode_text([tpl.replace("{}", name) for tpl in templates])
        t = t / np.sqrt((t**2).sum(1, keepdims=True))
        c = t.sum(0) / len(t)
        W.append(c / np.sqrt((c**2).sum()))
    W = np.array(W)
    right1 = right5 = total = 0
    per = {}
    for label, f in enumerate(folders):
        imgs = sorted(str(p) for p in (folder / f).iterdir())
        sims = lit.encode_image(imgs) @ W.T
        for row in sims:
            ranked = list(np.argsort(-row))
            right1 += ranked[0] == label
            right5 += label in ranked[:5]
            total += 1
            per.setdefault(names[label], []).append(ranked[0] == label)
    return right1 / total, right5 / total, {k: float(np.mean(v)) for k, v in per.items()}


def test_zero_shot_scores_equal_a_numpy_prompt_ensemble(colours, tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {} shape.\n# a comment\na {} object\n")
    (tmp_path / "c.txt").write_text("\n".join(f"{d.name}\tthe colour {d.name}" for d in sorted(colours.iterdir())))
    r = cli("zeroshot", "--model", "demo-lit", "--data", colours, "--classes", tmp_path / "c.txt",
            "--templates", tmp_path / "t.txt", "-o", tmp_path / "z.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "z.json").read_text())
    names = [f"the colour {d.name}" for d in sorted(colours.iterdir())]
    top1, top5, per = reference(mlx_aimv2.load("demo-lit"), colours, names, ["a photo of a {} shape.", "a {} object"])
    k = got["metrics"]
    assert got["task"] == "zeroshot_classification" and got["templates"] == ["a photo of a {} shape.", "a {} object"]
    assert got["classes"] == names and got["pretrained"] == "demo-lit" and got["language"] == "en"
    assert k["acc1"] == pytest.approx(top1) and k["acc5"] == pytest.approx(top5)
    assert k["per_class_recall"] == pytest.approx(per) and k["mean_per_class_recall"] == pytest.approx(
        np.mean(list(per.values()))
    )
    assert k["acc1"] > 2 / len(names)  # the demo LiT model knows colours: well above chance


def test_zero_shot_bad_inputs_are_one_line(colours, tmp_path):
    one_clear_line(cli("zeroshot", "--model", "demo-lit", "--data", tmp_path / "none"), "no such folder")
    one_clear_line(cli("zeroshot", "--model", "demo", "--data", colours), "LiT")
    (tmp_path / "two.txt").write_text("a\nb\n")
    one_clear_line(
        cli("zeroshot", "--model", "demo-lit", "--data", colours, "--classes", tmp_path / "two.txt"), "names for"
    )
    (tmp_path / "bad.txt").write_text("no braces here\n")
    one_clear_line(cli("zeroshot", "--model", "demo-lit", "--data", colours, "--templates", tmp_path / "bad.txt"), "{}")
    one_clear_line(cli("zeroshot", "--model", "demo-lit", "--data", colours, "-o", tmp_path), "is a folder")
    single = tmp_path / "single"
    shutil.copytree(next(colours.iterdir()), single / "red")
    one_clear_line(cli("zeroshot", "--model", "demo-lit", "--data", single), "at least 2")


BAD_TEMPLATES = ["a {} and a {}", "a {x} photo of a {}.", "a photo of a {} {", "a photo of {{}}.", "{0!r}", "{:>9}"]


@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_one_rule_for_templates_in_classify_and_zeroshot(colours, tmp_path, template):
    """IndexError, KeyError and ValueError tracebacks, and `{{}}` scoring every class with one prompt
    (top-1 21.43 %, exit 0); classify and zeroshot followed different rules."""
    one_clear_line(cli("classify", PHOTO, "--labels", "cat,dog", "-m", "demo-lit", "--template", template), "template")
    (tmp_path / "t.txt").write_text("a photo of a {}.\n" + template + "\n")
    last = one_clear_line(cli("zeroshot", "--model", "demo-lit", "--data", colours, "--templates", tmp_path / "t.txt"))
    assert "t.txt: line 2" in last and "'{}'" in last, last


@pytest.mark.parametrize("template", ["a photo of a {}.", "a photo of a {0}.", "{{a}} {}"])
def test_both_accept_the_same_good_templates(colours, tmp_path, template):
    assert cli("classify", PHOTO, "--labels", "cat,dog", "-m", "demo-lit", "--template", template).exit_code == 0
    (tmp_path / "t.txt").write_text(template + "\n")
    r = cli("zeroshot", "--model", "demo-lit", "--data", colours, "--templates", tmp_path / "t.txt")
    assert r.exit_code == 0, r.output


def test_the_json_is_a_row_clip_benchmarks_build_reads(colours, tmp_path):
    """CLIP_benchmark's `build` failed on our JSON (KeyError: 'pretrained'): every key it reads is
    there with its meaning (the reading below is its build's: one row per result file), and top-5 of
    fewer than five classes is NaN, as CLIP_benchmark reports it, not 1.0."""
    two = tmp_path / "two"
    for name in sorted(d.name for d in colours.iterdir())[:2]:
        shutil.copytree(colours / name, two / name)
    assert cli("zeroshot", "--model", "demo-lit", "--data", two, "-o", tmp_path / "z.json").exit_code == 0
    data = json.loads((tmp_path / "z.json").read_text())
    row = {k: data[k] for k in ("dataset", "model", "pretrained", "task", "language")}
    row.update(data["metrics"])
    assert row["task"] == "zeroshot_classification" and row["model"] == mlx_aimv2.load("demo-lit").config.name
    assert 0 <= row["acc1"] <= 1 and np.isnan(row["acc5"]) and len(data["classes"]) == 2
