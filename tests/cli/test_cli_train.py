"""``densenet train`` → ``eval`` → ``predict`` end to end, the demo, and every bad input as a one-line error."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from densenet.cli import build_parser, main
from densenet.cli.train import train_config
from densenet.training.recipe import TrainConfig
from imagefolder import CLASSES, make_image_folder

TINY_FLAGS = ["--model-arg", "block_config=[2,2]", "--model-arg", "growth_rate=8", "--log-every", "0"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("colours"), train=20, val=6, size=16)


@pytest.fixture(scope="module")
def trained(colours, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "colours"
    code = main(["train", "--dataset", "folder", "--data-dir", str(colours), "--image-size", "16", "--epochs", "4",
                 "--batch-size", "12", "--lr", "0.05", "--workers", "0", "--out", str(run), *TINY_FLAGS])
    assert code == 0
    return run


def _one_line_error(capsys, argv: list[str], command: str, pattern: str) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"densenet {command}: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_train_eval_predict(trained, colours, capsys, tmp_path):
    assert (trained / "best" / "config.json").is_file() and (trained / "confusion_matrix.png").is_file()
    assert main(["eval", "--weights", str(trained / "best"), "--dataset", "folder", "--data-dir", str(colours),
                 "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 18 and report["class_names"] == sorted(CLASSES)
    assert report["top1"] > 0.6  # three classes: chance is 1/3 (and top-5 of three classes is always 1)
    assert sum(map(sum, report["confusion"])) == 18 and set(report["per_class"]) == set(CLASSES)
    assert 0 < report["loss"] < 10
    assert Path(report["confusion_png"]).read_bytes()[:4] == b"\x89PNG"

    assert main(["eval", "--weights", str(trained / "best"), "--dataset", "folder", "--data-dir", str(colours),
                 "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "top-1" in table and "per-class top-1:" in table and all(f"  {name}" in table for name in CLASSES)

    assert main(["predict", "--weights", str(trained / "best"), str(colours / "val"), "--json", "--top-k", "2"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 18 and all(len(p["top_k"]) == 2 for p in predictions)
    assert all(abs(sum(c["probability"] for c in p["top_k"])) <= 1.0 + 1e-6 for p in predictions)
    right = sum(p["top_k"][0]["class"] == Path(p["file"]).parent.name for p in predictions)
    assert right > 12  # the class is the image's colour
    # eval's metrics agree with predict's answer for each image: confusion[true][predicted], top-1 its trace
    names = report["class_names"]
    confusion = [[0] * len(names) for _ in names]
    for p in predictions:
        confusion[names.index(Path(p["file"]).parent.name)][names.index(p["top_k"][0]["class"])] += 1
    assert report["confusion"] == confusion
    assert report["top1"] == pytest.approx(right / 18)
    assert report["per_class"] == {name: pytest.approx(row[i] / sum(row))
                                   for i, (name, row) in enumerate(zip(names, confusion, strict=True))}

    one = colours / "val" / "red" / "000.jpg"
    assert main(["predict", "--weights", str(trained / "last"), str(one), "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(one)) and all(name in line for name in CLASSES) and line.count("%") == 3


def test_flags_override_config_file(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset: synthetic\ntrain_limit: 64\neval_limit: 16\nimage_size: 8\nepochs: 5\n"
                      "model_args: {block_config: [2, 2], growth_rate: 4}\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--epochs", "1", "--batch-size", "16", "--out", str(run),
                 "--log-every", "0"]) == 0
    saved = (run / "config.yaml").read_text()
    assert "epochs: 1\n" in saved and "growth_rate: 4" in saved and "train_limit: 64" in saved
    assert "after 1 epochs" in capsys.readouterr().out


def test_every_recipe_field_is_a_flag(capsys):
    """Each TrainConfig field parses from the command line into the recipe, lists (``--milestones``) included."""
    values = {"dataset": "synthetic", "image_size": 12, "milestones": [0.3, 0.6], "lr": 0.25, "nesterov": False,
              "warmup_epochs": 0.5, "schedule": "cosine", "out": "somewhere", "model": "densenet121"}
    argv = ["train"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, *map(str, value if isinstance(value, list) else [value])]
    config = train_config(build_parser().parse_args(argv))
    assert {name: getattr(config, name) for name in values} == values
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    flags = set(re.findall(r"--[a-z-]+", help_text))
    missing = [item.name for item in dataclasses.fields(TrainConfig) if item.name not in ("resume", "model_args")
               and "--" + item.name.replace("_", "-") not in flags]
    assert not missing and "--model-arg" in flags
    flat = " ".join(help_text.split())  # argparse wraps the help column
    for shown in ("(default: 64)", "(default: densenet_bc100_k12)", "(default: on)", "(default: 0.5 0.75)",
                  "(default: none)", "(default: 0.9)",
                  "(default: 1e-4 sgd, L2; 0.05 adamw, decoupled)", "(default: 0.1 sgd, 0.001 adamw)"):
        assert shown in flat, shown
    assert flat.count("(default:") >= len(dataclasses.fields(TrainConfig)) - 4  # a few describe their own default


def test_demo_prints_accuracy_run_directory_and_predictions(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--samples", "3", "--out", str(run), *TINY_FLAGS]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("test accuracy ") and "/360 held-out digits" in out[0]
    assert out[1].startswith(f"run directory {run}")
    assert len(out) == 3 + 3 and all(" true " in line and " predicted " in line for line in out[3:])
    assert sorted(p.name for p in (run / "heldout").iterdir()) == ["digit00.png", "digit01.png", "digit02.png"]


def test_unknown_config_key(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("dataset: digits\nbatchsize: 32\n")
    _one_line_error(capsys, ["train", "--config", str(recipe)], "train",
                    rf"unknown config key 'batchsize' in {recipe}; did you mean 'batch_size'")


def test_missing_and_empty_data_directories(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--dataset", "folder", "--epochs", "1", "--out", str(out)]
    _one_line_error(capsys, [*base, "--data-dir", str(tmp_path / "nowhere")], "train", "nowhere does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, [*base, "--data-dir", str(tmp_path / "empty")], "train", "has no train/ folder")
    root = make_image_folder(tmp_path / "holes", train=2, val=1)
    for image in (root / "train" / "blue").iterdir():
        image.unlink()
    _one_line_error(capsys, [*base, "--data-dir", str(root)], "train", r"with no images in .*train: blue")
    assert not out.exists()  # nothing written, not even half
    _one_line_error(capsys, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty")], "train",
                    "--download")


def test_weights_of_another_class_count_or_architecture(trained, colours, tmp_path, capsys):
    _one_line_error(capsys, ["eval", "--weights", str(trained / "best"), "--dataset", "digits"], "eval",
                    "classify 3 classes; digits has 10")
    other = tmp_path / "other"
    shutil.copytree(trained / "best", other)
    meta = json.loads((other / "config.json").read_text())
    meta["architecture"]["growth_rate"] = 12
    (other / "config.json").write_text(json.dumps(meta))
    _one_line_error(capsys, ["predict", "--weights", str(other), str(colours / "val")], "predict",
                    "do not fit this model")
    _one_line_error(capsys, ["eval", "--weights", str(tmp_path / "absent"), "--dataset", "digits"], "eval",
                    "does not exist")


def test_bad_predict_inputs(trained, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["predict", "--weights", str(trained / "best"), str(broken)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [  # the file named, then the count at the end
        f"densenet predict: skipped: cannot read image {broken}: Truncated File Read",
        "densenet predict: error: 1 of 1 file(s) could not be read"]
    _one_line_error(capsys, ["predict", "--weights", str(trained / "best"), str(tmp_path / "no.png")], "predict",
                    "no.png does not exist")
    (tmp_path / "nothing").mkdir()
    _one_line_error(capsys, ["predict", "--weights", str(trained / "best"), str(tmp_path / "nothing")], "predict",
                    "no image files")


def test_bad_resume_and_model_args(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--resume", str(tmp_path / "gone")], "train", "nothing to resume")
    _one_line_error(capsys, ["train", "--model-arg", "growth_rate"], "train", "KEY=VALUE")
    _one_line_error(capsys, ["train", "--model-arg", "growth=3"], "train", "unknown DenseNet config key")
    _one_line_error(capsys, ["train", "--amp", "fp16", "--device", "cpu"], "train", "fp16 needs CUDA")


@pytest.mark.parametrize("make_argv, pattern", [
    (lambda t: ["--model-arg", "block_config=5"], "block_config must be a list of layer counts"),
    (lambda t: ["--model-arg", "growth_rate=[1"], r"--model-arg 'growth_rate=\[1': the value is not valid YAML"),
    (lambda t: ["--config", _write(t / "m.yaml", "model_args: 5\n")], "model_args in .*m.yaml must be a mapping"),
    (lambda t: ["--gamma", "nan"], "gamma must be a finite number"),
    (lambda t: ["--gamma", "-1"], "gamma multiplies the learning rate at each milestone: it must be > 0"),
    (lambda t: ["--lr", "inf"], "lr must be a finite number"),
    (lambda t: ["--weight-decay", "nan"], "weight_decay must be a finite number"),
    (lambda t: ["--warmup-epochs", "nan"], "warmup_epochs must be a finite number"),
    (lambda t: ["--seed", "99999999999999999999"], r"seed must be in \[0, 2\*\*63\)"),
    (lambda t: ["--log-every", "-1"], "log_every must be >= 0"),
    (lambda t: ["--workers", "-1"], "workers must be >= 0"),
    (lambda t: ["--image-size", "99999999999999999999"], r"image_size must be below 2\*\*31"),
    (lambda t: ["--dataset", "synthetic", "--image-size", "9000"], "image_size must be at most 8192"),
    (lambda t: ["--dataset", "synthetic", "--train-limit", "2000000000"], "at most 10,000,000"),
    (lambda t: ["--config", str(t)], "is a directory"),
    (lambda t: ["--config", _write(t / "latin1.yaml", b"epochs: 3 # \xff\n")], "latin1.yaml is not UTF-8 text"),
    (lambda t: ["--dataset", "folder", "--data-dir", _write(t / "file.txt", "x")], "file.txt is a file"),
    (lambda t: ["--dataset", "synthetic", "--image-size", "1", *TINY_FLAGS], "image size 1 is too small"),
    (lambda t: ["--dataset", "synthetic", "--image-size", "4", "--batch-size", "1", "--train-limit", "4",
                "--model-arg", "block_config=[1,1,1]"], "one value per channel, too few for batch statistics"),
])
def test_bad_recipe_values_fail_before_the_run_directory(tmp_path, capsys, make_argv, pattern):
    out = tmp_path / "run"
    _one_line_error(capsys, ["train", "--out", str(out), *make_argv(tmp_path)], "train", pattern)
    assert not out.exists()


def _write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def test_bad_checkpoints_on_resume(trained, tmp_path, capsys):
    text = tmp_path / "text"
    text.mkdir()
    shutil.copy(trained / "config.yaml", text / "config.yaml")
    (text / "checkpoint.pt").write_text("hello\n")
    _one_line_error(capsys, ["train", "--resume", str(text)], "train", "checkpoint.pt is not a readable checkpoint")
    cases = [("history", None, "'history' is missing or of the wrong type"),
             ("epoch", "abc", "'epoch' is missing or of the wrong type"),
             ("epoch", -1, "epoch -1, step 0"),
             ("step", -5, "epoch 4, step -5"),
             ("step", 999, "epoch 4, step 999 of 5"),
             ("best_acc", float("nan"), "best accuracy nan"),
             ("history", [{"epoch": 1}], "a history of 1 rows for 4 epochs"),
             ("history", [{"epoch": "x"}] * 4, "history rows without the metrics epoch, train_loss")]
    for index, (field, value, message) in enumerate(cases):
        broken = tmp_path / f"case{index}"
        shutil.copytree(trained, broken)
        state = torch.load(broken / "checkpoint.pt", weights_only=True)
        if value is None:
            del state[field]
        else:
            state[field] = value
        torch.save(state, broken / "checkpoint.pt")
        before = sorted(p.relative_to(broken) for p in broken.rglob("*"))
        _one_line_error(capsys, ["train", "--resume", str(broken)], "train",
                        rf"checkpoint.pt is malformed: {re.escape(message)}")
        assert sorted(p.relative_to(broken) for p in broken.rglob("*")) == before  # nothing written


def test_weights_with_nan_or_a_malformed_config(trained, colours, tmp_path, capsys):
    nan_weights = tmp_path / "nan"
    shutil.copytree(trained / "best", nan_weights)
    tensors = load_file(nan_weights / "model.safetensors")
    tensors["classifier.weight"][0, 0] = float("nan")
    save_file(tensors, nan_weights / "model.safetensors")
    _one_line_error(capsys, ["predict", "--weights", str(nan_weights), str(colours / "val")], "predict",
                    "hold NaN or infinite values .*: classifier.weight")
    for name, edit, message in (("list", lambda meta: [meta], "it holds no 'architecture' mapping"),
                                ("mean", lambda meta: {**meta, "preprocessing": {**meta["preprocessing"],
                                                                                  "mean": "abc"}},
                                 "preprocessing must map")):
        edited = tmp_path / name
        shutil.copytree(trained / "best", edited)
        meta = json.loads((edited / "config.json").read_text())
        (edited / "config.json").write_text(json.dumps(edit(meta)))
        _one_line_error(capsys, ["predict", "--weights", str(edited), str(colours / "val")], "predict",
                        f"config.json is not a valid densenet config: {message}")


def test_out_of_memory_is_one_line_and_other_runtime_errors_are_not_hidden(monkeypatch, capsys):
    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 12000000000000 bytes.")

    monkeypatch.setattr("densenet.cli.models.cmd_summary", allocate)
    _one_line_error(capsys, ["summary", "densenet121"], "summary",
                    r"out of memory \(.*can't allocate memory.*\): use a smaller batch, image or model")

    def bug(args):
        raise RuntimeError("a bug, not the user's input")

    monkeypatch.setattr("densenet.cli.models.cmd_summary", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["summary", "densenet121"])


def test_no_readable_evaluation_image_is_an_error(trained, tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", train=4, val=2)
    for image in (root / "val").rglob("*.*"):
        image.write_bytes(b"not an image")
    run = tmp_path / "run"
    for argv in (["eval", "--weights", str(trained / "best"), "--dataset", "folder", "--data-dir", str(root),
                  "--workers", "0", "--out", str(tmp_path / "eval")],
                 ["train", "--dataset", "folder", "--data-dir", str(root), "--image-size", "16", "--batch-size", "4",
                  "--workers", "0", "--epochs", "1", "--out", str(run), *TINY_FLAGS]):
        assert main(argv) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert sum(line.startswith("skipping unreadable image") for line in lines) == 6  # one warning per file
        assert "Traceback" not in "\n".join(lines)
        assert lines[-1].startswith(f"densenet {argv[0]}: error: no image was evaluated"), lines[-1]
    assert not (tmp_path / "eval").exists()
    assert not run.exists()  # created by the failed run before any checkpoint: removed


def test_errors_print_no_traceback_in_a_real_process(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("epochz: 3\n")
    result = subprocess.run([sys.executable, "-m", "densenet", "train", "--config", str(recipe)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"densenet train: error: unknown config key 'epochz' in {recipe}; did you mean 'epochs'?"]
