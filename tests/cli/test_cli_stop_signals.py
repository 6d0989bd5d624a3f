"""SIGTERM ends ``densenet train`` promptly and cleanly, as a service manager sends it (to the whole process group,
loader workers included): one line naming the signal and the checkpoint, exit 128 + 15, the run directory's lock
released, no temporary file left, and ``--resume`` continues from the checkpoint; a signal before training starts
leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from imagefolder import make_image_folder

FLAGS = ["--dataset", "folder", "--image-size", "16", "--model-arg", "block_config=[2,2]", "--model-arg",
         "growth_rate=8", "--batch-size", "6", "--log-every", "1", "--workers", "1"]
PROMPT_S = 10  # a tiny model's step takes milliseconds: what is left is saving, and ending the workers


def _train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "densenet", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,  # its own process group
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _group_signal_after(process: subprocess.Popen, marker: str) -> tuple[float, list[str]]:
    """Read stderr until a line holds ``marker``, send SIGTERM to the process group; seconds until it ended, and
    its stderr."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if marker in line:
            break
    else:
        process.wait()
        pytest.fail(f"no line with {marker!r}; stderr:\n{''.join(lines)}")
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    lines += process.stderr.read().splitlines(keepends=True)
    process.wait(timeout=60)
    return time.monotonic() - sent, lines


def test_sigterm_mid_epoch_stops_promptly_saves_and_resumes(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", train=20, val=2)
    run = tmp_path / "run"
    process = _train(*FLAGS, "--data-dir", str(data), "--epochs", "200", "--out", str(run))
    seconds, lines = _group_signal_after(process, "epoch 2/200 step 2/10 ")
    assert process.returncode == 128 + signal.SIGTERM, "".join(lines)
    assert seconds < PROMPT_S, seconds
    assert "Traceback" not in "".join(lines)
    last = lines[-1].strip()
    assert last.startswith("densenet train: stopped by SIGTERM at epoch 2, step ")
    assert last.endswith(f"checkpoint saved in {run / 'checkpoint.pt'}; continue with: densenet train --resume {run}")
    assert not (run / "run.lock").exists()
    assert not [path.name for path in run.rglob("*") if ".tmp" in path.name]  # no half-written file
    from densenet.cli import main

    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    resumed = capsys.readouterr()
    assert "resuming at epoch 2, step " in resumed.err and "after 2 epochs" in resumed.out


def test_sigterm_before_training_starts_leaves_nothing(tmp_path, capsys, monkeypatch):
    """The signal lands while the data is being read (here: as the run is built): no half-made run directory."""
    import densenet.training.engine as engine
    from densenet.cli import main

    def build_run_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_build_run(*args, **kwargs)

    real_build_run = engine.build_run
    monkeypatch.setattr(engine, "build_run", build_run_signalled)
    data = make_image_folder(tmp_path / "data", train=2, val=1)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", *FLAGS, "--data-dir", str(data), "--out", str(tmp_path / "new" / "run")]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "densenet train: stopped by SIGTERM before training started: nothing to save")
    assert not (tmp_path / "new").exists()  # the directories it created are gone, its lock with them
    assert signal.getsignal(signal.SIGTERM) is before
