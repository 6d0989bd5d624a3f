"""Volumes: real NIfTI headers and orientations (nibabel's own test files), .npy channel conventions, resampling and
standardisation with known answers, the 3D augmentation, the synthetic shapes, and bad files skipped and counted."""

from __future__ import annotations

import gzip
import importlib
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from densenet.data.arrayio import MissingExtraError
from densenet.data.arrays import ArrayFiles, ArrayTensors, array_transform, first_channels, load_arrays
from densenet.data.datasets import DataSpec, load_split, preprocessing_for
from densenet.data.loader import EpochBatches, Loader
from densenet.data.synthetic_volumes import NOISE_STD, SHAPES, shape_mask, synthetic_shapes
from densenet.data.volumes import read_volume
from densenet.meta import ArrayPreprocessing, ModelMeta, Preprocessing

nibabel = pytest.importorskip("nibabel")
NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"


def _raw(name: str) -> np.ndarray:
    return np.asarray(nibabel.load(NIBABEL_DATA / name).get_fdata(dtype=np.float32))


def test_real_nifti_is_reoriented_to_ras():
    # anatomical.nii is stored LAS (its affine's first column points left): RAS+ flips the first axis
    assert nibabel.aff2axcodes(nibabel.load(NIBABEL_DATA / "anatomical.nii").affine) == ("L", "A", "S")
    volume = read_volume(NIBABEL_DATA / "anatomical.nii")
    assert volume.shape == (1, 33, 41, 25) and volume.dtype == torch.float32
    np.testing.assert_array_equal(volume[0].numpy(), np.flip(_raw("anatomical.nii"), axis=0))
    # standard.nii.gz is already RAS: read as stored
    assert nibabel.aff2axcodes(nibabel.load(NIBABEL_DATA / "standard.nii.gz").affine) == ("R", "A", "S")
    np.testing.assert_array_equal(read_volume(NIBABEL_DATA / "standard.nii.gz")[0].numpy(), _raw("standard.nii.gz"))


def test_real_4d_nifti_keeps_its_last_axis_as_channels():
    raw = _raw("example4d.nii.gz")  # (128, 96, 24, 2), LAS
    volume = read_volume(NIBABEL_DATA / "example4d.nii.gz")
    assert volume.shape == (2, 128, 96, 24)
    for channel in range(2):
        np.testing.assert_array_equal(volume[channel].numpy(), np.flip(raw[..., channel], axis=0))


def test_permuted_axes_are_put_in_ras_order(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    # voxel axis 0 runs superior, axis 1 right, axis 2 anterior: RAS order is (axis 1, axis 2, axis 0)
    affine = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    nibabel.save(nibabel.Nifti1Image(array, affine), tmp_path / "permuted.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "permuted.nii.gz")[0].numpy(), array.transpose(1, 2, 0))


def test_npy_volumes_one_channel_or_channels_first(tmp_path):
    three = np.random.default_rng(0).random((5, 6, 7))
    four = np.random.default_rng(1).random((2, 5, 6, 7))
    np.save(tmp_path / "three.npy", three)
    np.save(tmp_path / "four.npy", four.astype(np.int16))
    np.testing.assert_allclose(read_volume(tmp_path / "three.npy").numpy(), three[None].astype(np.float32))
    np.testing.assert_array_equal(read_volume(tmp_path / "four.npy").numpy(), four.astype(np.int16))


@pytest.mark.parametrize("case, message", [
    ("two_dims", "has 2 dimensions"),
    ("five_dims", "has 5 dimensions"),
    ("corrupt_gz", "cannot read volume"),
    ("truncated_gz", "cannot read volume"),
    ("pickled", "cannot read"),
    ("nan", "NaN or infinite"),
    ("complex", "real numbers"),
])
def test_bad_volumes_raise_one_clear_error(tmp_path, case, message):
    path = _bad_volume(tmp_path, case)
    with pytest.raises(ValueError, match=message) as error:
        read_volume(path)
    assert str(path) in str(error.value)


def _bad_volume(directory: Path, case: str) -> Path:
    if case == "two_dims":
        np.save(directory / "flat.npy", np.zeros((4, 4)))
        return directory / "flat.npy"
    if case == "five_dims":
        np.save(directory / "five.npy", np.zeros((2, 2, 2, 2, 2)))
        return directory / "five.npy"
    if case == "corrupt_gz":
        (directory / "corrupt.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
        return directory / "corrupt.nii.gz"
    if case == "truncated_gz":
        data = (NIBABEL_DATA / "example4d.nii.gz").read_bytes()
        (directory / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
        return directory / "truncated.nii.gz"
    if case == "pickled":
        np.save(directory / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return directory / "objects.npy"
    if case == "nan":
        np.save(directory / "nan.npy", np.full((3, 3, 3), np.nan))
        return directory / "nan.npy"
    np.save(directory / "complex.npy", np.zeros((3, 3, 3), dtype=np.complex64))
    return directory / "complex.npy"


def test_eval_transform_resamples_and_standardises_each_channel():
    volume = torch.randn(2, 8, 8, 8) * torch.tensor([3.0, 0.5]).view(2, 1, 1, 1) + torch.tensor([10.0, -2.0]).view(
        2, 1, 1, 1)
    original = volume.clone()
    same_size = array_transform(ArrayPreprocessing("volume", 2, 8), augment=False)(volume)
    assert torch.equal(volume, original)  # the input is left as it was (MONAI standardises in place)
    mean = volume.mean(dim=(1, 2, 3), keepdim=True)
    expected = (volume - mean) / volume.std(dim=(1, 2, 3), keepdim=True, correction=0)  # population std, as MONAI
    torch.testing.assert_close(same_size, expected, rtol=1e-4, atol=1e-4)
    # a trilinear ramp stays a ramp when resampled (a linear function is reproduced exactly away from the edges)
    ramp = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1).expand(1, 16, 4, 4).contiguous()
    out = array_transform(ArrayPreprocessing("volume", 1, 8), augment=False)(ramp)
    assert out.shape == (1, 8, 8, 8)
    steps = out[0, 1:-1, 0, 0].diff()
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()), rtol=1e-3, atol=1e-4)
    assert steps[0] > 0


def test_augmentation_flips_every_axis_shifts_and_is_seeded():
    side, margin = 16, 2
    volume = torch.zeros(1, side, side, side)
    volume[0, 3, 3, 3] = 1.0  # one bright voxel near a corner
    transform = array_transform(ArrayPreprocessing("volume", 1, side), augment=True)
    octants, offsets = set(), set()
    for seed in range(48):
        transform.set_random_state(seed=seed)
        out = transform(volume)
        assert out.shape == (1, side, side, side)
        position = np.unravel_index(int(out.argmax()), (side,) * 3)
        # the voxel lies at 3 or its mirror 12 along each axis, moved by the random crop by at most ±margin
        mirrored = [p > side // 2 for p in position]
        offset = tuple(int(p - (side - 1 - 3 if m else 3)) for p, m in zip(position, mirrored, strict=True))
        assert all(abs(o) <= margin for o in offset)
        octants.add(tuple(mirrored))
        offsets.add(offset)
    assert len(octants) == 8 and len(offsets) > 8
    transform.set_random_state(seed=5)
    first = transform(volume)
    transform.set_random_state(seed=5)
    torch.testing.assert_close(transform(volume), first)


def test_shape_masks_have_their_known_sizes():
    centre = torch.tensor([10.0, 10.0, 10.0])
    assert int(shape_mask("cube", 21, centre, 3.0, 0).sum()) == 7**3
    sphere = int(shape_mask("sphere", 21, centre, 5.0, 0).sum())
    assert abs(sphere - 4 / 3 * math.pi * 125) / (4 / 3 * math.pi * 125) < 0.05
    rod = shape_mask("rod", 21, centre, 4.0, 2)
    assert int(rod.sum()) == 17 * int(shape_mask("sphere", 21, centre, 2.0, 0)[:, :, 10].sum())  # 2r·2+1 slices
    assert rod[10, 10, 2] and not rod[10, 10, 1] and not rod[13, 10, 10]


def test_synthetic_shapes_are_repeatable_and_labelled_by_their_shape():
    shapes = synthetic_shapes(30, 16, seed=3)
    assert shapes.arrays.shape == (30, 1, 16, 16, 16) and shapes.class_names == list(SHAPES)
    torch.testing.assert_close(synthetic_shapes(30, 16, seed=3).arrays, shapes.arrays)
    bare = synthetic_shapes(30, 16, seed=3, noise_std=0.0)
    assert abs(float((shapes.arrays - bare.arrays).std()) - NOISE_STD) < 0.01  # the same shapes, plus the noise
    for volume, target in zip(bare.arrays[:, 0], bare.targets.tolist(), strict=True):
        inside = volume > 0
        brightness = volume[inside].unique()
        assert len(brightness) == 1 and 0.75 <= float(brightness) <= 1.25  # one brightness per shape
        extent = sorted(int(axis.max() - axis.min()) + 1 for axis in inside.nonzero().T)  # bounding box
        fill = int(inside.sum()) / math.prod(extent)
        if SHAPES[target] == "cube":
            assert fill == 1 and extent[2] - extent[0] <= 1  # a sub-voxel centre moves each face by up to one
        elif SHAPES[target] == "sphere":
            assert 0.4 < fill < 0.65 and extent[2] - extent[0] <= 1  # π/6 ≈ 0.52 of its box
        else:
            assert 0.6 < fill <= 1 and extent[2] >= 2 * extent[1]  # long: π/4 of its box, or all of it when thin
    assert set(shapes.targets.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="at least 8"):
        synthetic_shapes(4, 6, seed=0)


def _volume_folder(root: Path) -> dict[str, Path]:
    """train/ and val/ with classes a and b of 16³-ish .npy and .nii.gz volumes, and three bad training files."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, level in (("a", 0.0), ("b", 5.0)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(3):
                np.save(folder / f"{index}.npy", rng.normal(level, 1, (12, 10, 14)))
            nibabel.save(nibabel.Nifti1Image(rng.normal(level, 1, (10, 12, 9)).astype(np.float32), np.eye(4)),
                         folder / "x.nii.gz")
    bad = {"dims": root / "train" / "a" / "flat.npy", "corrupt": root / "train" / "b" / "corrupt.nii.gz",
           "channels": root / "train" / "b" / "two.npy"}
    np.save(bad["dims"], np.zeros((8, 8)))
    bad["corrupt"].write_bytes(gzip.compress(b"garbage" * 100))
    np.save(bad["channels"], np.zeros((2, 8, 8, 8)))
    (root / "train" / "a" / "notes.txt").write_text("ignored: not a volume")
    return bad


def test_volume_folder_skips_and_counts_bad_files(tmp_path, caplog):
    bad = _volume_folder(tmp_path)
    spec = DataSpec(name="volumes", data_dir=str(tmp_path), image_size=8)
    train = load_split(spec, "train")
    assert isinstance(train, ArrayFiles) and len(train) == 11 and train.class_names == ["a", "b"]
    preprocessing = preprocessing_for(spec, train)
    assert preprocessing == ArrayPreprocessing("volume", 1, 8) and first_channels(train) == 1
    # every file once per epoch (the evaluation order), augmented as in training
    loader = Loader(train, preprocessing, EpochBatches(len(train), 4, shuffle=False), augment=spec.augment_kind,
                    workers=0)
    with caplog.at_level(logging.WARNING, logger="densenet"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            batches = list(loader)
            assert all(images.shape[1:] == (1, 8, 8, 8) for images, _ in batches)
            assert sum(len(targets) for _, targets in batches) == 8  # 11 files, 3 of them bad
    assert sorted(set(loader.skipped)) == sorted(map(str, bad.values())) and len(loader.skipped) == 6
    lines = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(lines) == 3  # one line per bad file, once
    assert any("has 2 dimensions" in line for line in lines)
    assert any(str(bad["corrupt"]) in line for line in lines)
    assert any("2 channel(s), the network takes 1" in line for line in lines)
    evaluation = Loader(load_split(spec, "eval", preprocessing), preprocessing,
                        EpochBatches(8, 8, shuffle=False), workers=0)
    images, targets = next(iter(evaluation))
    assert images.shape == (8, 1, 8, 8, 8) and targets.tolist() == [0] * 4 + [1] * 4


def test_volume_datasets_refuse_what_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match="needs a data directory"):
        DataSpec(name="volumes")
    with pytest.raises(ValueError, match="augment auto"):
        DataSpec(name="shapes3d", augment="cifar")
    with pytest.raises(ValueError, match="weights read images; dataset shapes3d holds volumes"):
        load_split(DataSpec(name="shapes3d", image_size=8), "eval", Preprocessing("L", 8, 8, (0.5,), (0.2,)))
    with pytest.raises(ValueError, match="weights read volumes; dataset digits holds images"):
        load_split(DataSpec(name="digits"), "eval", ArrayPreprocessing("volume", 1, 8))
    with pytest.raises(ValueError, match="2 channel"):
        np.save(tmp_path / "two.npy", np.zeros((2, 4, 4, 4)))
        load_arrays([tmp_path / "two.npy"], ArrayPreprocessing("volume", 1, 4))


def test_array_preprocessing_travels_in_the_model_meta():
    meta = ModelMeta("densenet121", ("a", "b"), ArrayPreprocessing("volume", 2, 64))
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    image = ModelMeta(None, None, Preprocessing("RGB", 36, 32, (0.5,) * 3, (0.25,) * 3))
    assert ModelMeta.from_dict(image.to_dict()) == image
    with pytest.raises(ValueError, match="input kind"):
        ArrayPreprocessing.from_dict({"kind": "movie", "channels": 1, "size": 8})


def test_in_memory_split_loads_in_order():
    shapes = synthetic_shapes(6, 8, seed=0)
    assert isinstance(shapes, ArrayTensors)
    loader = Loader(shapes, ArrayPreprocessing("volume", 1, 8), EpochBatches(6, 3, shuffle=False), workers=0)
    assert [targets.tolist() for _, targets in loader] == [shapes.targets[:3].tolist(), shapes.targets[3:].tolist()]


def test_a_missing_extra_says_how_to_install_it(monkeypatch):
    real_import = importlib.import_module

    def without_monai(name: str, package: str | None = None):
        if name.split(".")[0] == "monai":
            raise ModuleNotFoundError("No module named 'monai'")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", without_monai)
    with pytest.raises(MissingExtraError, match=r"needs monai, which is not installed: pip install 'densenet\[volumes"):
        array_transform(ArrayPreprocessing("volume", 1, 8), augment=False)
    assert issubclass(MissingExtraError, ValueError)  # the CLI prints it as one line


def test_weights_without_preprocessing_read_what_their_dimensions_say():
    from densenet.config import DenseNetConfig

    assert ModelMeta().input_preprocessing(DenseNetConfig(spatial_dims=3, in_chans=2, stem="cifar")) == \
        ArrayPreprocessing("volume", 2, 32)
    assert ModelMeta().input_preprocessing(DenseNetConfig(spatial_dims=1, in_chans=12)) == \
        ArrayPreprocessing("signal", 12, 224)
    assert isinstance(ModelMeta().input_preprocessing(DenseNetConfig(in_chans=1)), Preprocessing)
