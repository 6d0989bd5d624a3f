"""Signals: .npy and .csv conventions with known values, bad files, and a class folder resampled to its length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densenet.data.arrays import ArrayFiles, array_transform
from densenet.data.datasets import DataSpec, load_split, preprocessing_for
from densenet.data.loader import EpochBatches, Loader
from densenet.data.signals import read_signal
from densenet.meta import ArrayPreprocessing


def test_npy_signals_one_channel_or_channels_first(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(5))
    np.save(tmp_path / "two.npy", np.arange(10, dtype=np.float32).reshape(2, 5))
    assert read_signal(tmp_path / "one.npy").tolist() == [[0, 1, 2, 3, 4]]
    assert read_signal(tmp_path / "two.npy").tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_csv_columns_are_channels_with_or_without_a_header(tmp_path):
    (tmp_path / "header.csv").write_text("lead_i,lead_ii\n1,10\n2,20\n3,30\n")
    (tmp_path / "plain.csv").write_text("1.5\n-2\n4e1\n")
    assert read_signal(tmp_path / "header.csv").tolist() == [[1, 2, 3], [10, 20, 30]]
    assert read_signal(tmp_path / "plain.csv").tolist() == [[1.5, -2, 40]]


@pytest.mark.parametrize("name, content, message", [
    ("ragged.csv", "1,2\n3\n", "cannot read signal"),
    ("words.csv", "a,b\nc,d\n", "cannot read signal"),
    ("empty.csv", "", "empty"),
    ("cube.npy", np.zeros((2, 3, 4)), "has 3 dimensions"),
    ("inf.npy", np.array([1.0, np.inf]), "NaN or infinite"),
])
def test_bad_signals_raise_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content)
    with pytest.raises(ValueError, match=message):
        read_signal(path)


def test_signal_transform_resamples_a_line_to_a_line():
    line = torch.linspace(0, 1, 100).view(1, 100)
    out = array_transform(ArrayPreprocessing("signal", 1, 25), augment=False)(line)
    assert out.shape == (1, 25)
    steps = out[0, 2:-2].diff()  # anti-aliasing blurs the two ends; inside, a line stays a line
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)  # standardised
    augmented = array_transform(ArrayPreprocessing("signal", 1, 25), augment=True)
    augmented.set_random_state(seed=0)
    assert augmented(line).shape == (1, 25)


def test_signal_folder_loads_at_its_length_and_skips_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("calm", "spiky"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for index in range(2):
                np.save(folder / f"{index}.npy", rng.normal(size=(3, 50 + 10 * index)))
            np.savetxt(folder / "table.csv", rng.normal(size=(40, 3)), delimiter=",", header="x,y,z", comments="")
    np.save(tmp_path / "train" / "calm" / "mono.npy", rng.normal(size=64))  # one channel among three
    spec = DataSpec(name="signals", data_dir=str(tmp_path), image_size=32)
    train = load_split(spec, "train")
    assert isinstance(train, ArrayFiles) and len(train) == 7
    preprocessing = preprocessing_for(spec, train)
    assert preprocessing == ArrayPreprocessing("signal", 3, 32) and preprocessing.spatial_dims == 1
    loader = Loader(train, preprocessing, EpochBatches(7, 7, shuffle=False), augment="signal", workers=0)
    images, targets = next(iter(loader))
    assert images.shape == (6, 3, 32) and sorted(targets.tolist()) == [0, 0, 0, 1, 1, 1]
    assert loader.skipped == [str(tmp_path / "train" / "calm" / "mono.npy")]
    assert len(load_split(spec, "eval")) == 6  # test/ serves when there is no val/
