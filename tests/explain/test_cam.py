"""Class activation maps: the map pytorch-grad-cam computes through :class:`CamModel` is Grad-CAM's formula at the
final feature map, for every form of the model; resolution mapping, target choice, bad input, the 3-D montage."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import densenet
from densenet.cli.explain import METHOD_NAMES
from densenet.explain.api import to_image_resolution
from densenet.explain.cam import METHODS, CamModel, compute_maps, resolve_targets
from densenet.explain.checks import box_fraction, pointing_game, points_inside, randomized_copy
from densenet.explain.write import output_stems, panels
from densenet.meta import MULTI_LABEL, ModelMeta, Preprocessing
from helpers import randomize_batch_norm

NAMES = ["cat", "dog", "emu"]


def _tiny(memory_efficient: bool = True, seed: int = 0) -> densenet.DenseNet:
    torch.manual_seed(seed)
    model = densenet.DenseNet(block_config=(2, 2), growth_rate=8, num_init_features=16, stem="cifar", num_classes=3,
                              memory_efficient=memory_efficient, meta=ModelMeta(class_names=NAMES))
    return randomize_batch_norm(model, seed).eval()


def _reference_gradcam(model: densenet.DenseNet, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Grad-CAM by hand on the plain autograd path: ``α_k = mean_ij ∂y_c/∂A_kij``, ``ReLU(Σ_k α_k A_k)``, min-max
    scaled, bilinearly resized to the input (half-pixel centres, as OpenCV's ``resize``) and min-max scaled again
    (pytorch-grad-cam scales once per layer and once after averaging the layers)."""
    plain = densenet.DenseNet(model.config.replace(memory_efficient=False), meta=model.meta)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    maps = plain.forward_features(x).detach().requires_grad_()  # (N, C, h, w)
    logits = plain.forward_head(maps)
    logits[torch.arange(len(classes)), classes].sum().backward()
    alpha = maps.grad.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = (alpha * maps).sum(dim=1, keepdim=True).clamp(min=0).detach()  # (N, 1, h, w)
    cam = F.interpolate(_unit(cam), size=x.shape[2:], mode="bilinear", align_corners=False)  # (N, 1, H, W)
    return _unit(cam)[:, 0].numpy()


def _unit(cam: torch.Tensor) -> torch.Tensor:
    low, high = cam.amin(dim=(2, 3), keepdim=True), cam.amax(dim=(2, 3), keepdim=True)
    return (cam - low) / (high - low + 1e-7)


@pytest.mark.parametrize("form", ["memory-efficient", "plain", "optimized", "train-mode"])
def test_gradcam_is_the_formula_for_every_form_of_the_model(form):
    model = _tiny(memory_efficient=form != "plain")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    classes = [0, 2, 1, 2]
    expected = _reference_gradcam(model, x, classes)
    subject = densenet.optimize_for_inference(model) if form == "optimized" else model
    if form == "train-mode":
        subject.train()
    mode = subject.training
    maps = compute_maps(subject, x, list(enumerate(classes)), "gradcam")
    assert maps.shape == (4, 16, 16) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, atol=2e-4)
    assert subject.training == mode  # the caller's mode is given back
    assert all(p.grad is None for p in subject.parameters())  # nothing accumulated on the model


def test_pytorch_grad_cam_hooks_work_on_the_default_model():
    """Used directly (torchvision-style, hooking a dense block) on the default memory-efficient model, pytorch-grad-cam
    records the same activations and gradients as on the plain autograd path: the explicit Functions pass
    module hooks and tensor hooks through."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    recorded = []
    for memory_efficient in (True, False):
        model = _tiny(memory_efficient)
        with GradCAM(model=model, target_layers=[model.features.denseblock2]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
            recorded.append((maps, cam.activations_and_grads.activations[0], cam.activations_and_grads.gradients[0]))
    (maps_a, act_a, grad_a), (maps_b, act_b, grad_b) = recorded
    assert grad_a.abs().sum() > 0
    torch.testing.assert_close(act_a, act_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_a, grad_b, atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(maps_a, maps_b, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_maps_in_unit_range_on_the_optimized_model(method):
    model = densenet.optimize_for_inference(_tiny())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    maps = compute_maps(model, x, [(0, 1), (1, 2)], method)
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.99  # min-max scaled per map


def test_the_cli_offers_exactly_the_methods():
    assert METHOD_NAMES == METHODS


def test_the_public_function_predicts_and_explains():
    model = _tiny()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    explanations = densenet.explain(model, x)
    probabilities = F.softmax(model(x), dim=1)
    assert [e.class_index for e in explanations] == probabilities.argmax(dim=1).tolist()
    assert [e.class_name for e in explanations] == [NAMES[i] for i in probabilities.argmax(dim=1).tolist()]
    assert [e.probability for e in explanations] == pytest.approx(probabilities.max(dim=1).values.tolist(), abs=1e-6)
    assert all(e.heatmap.shape == (16, 16) and e.image.shape == (16, 16, 3) for e in explanations)
    requested = densenet.explain(model.train(), x, targets="emu", method="gradcam++")
    assert [e.class_index for e in requested] == [2, 2, 2]
    assert model.training  # explained in eval mode, the caller's mode given back
    model.eval()
    # importing a submodule binds the package as the attribute densenet.explain: it is that package, callable
    assert densenet.explain is sys.modules["densenet.explain"] and densenet.explain.cam.compute_maps is compute_maps
    assert len(densenet.explain(model, x, targets=[0, "dog", 2])) == 3


def test_bad_input_is_one_clear_error():
    model = _tiny()
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        densenet.explain(model, torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        densenet.explain(model, torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="unknown class 'wolf': the weights know cat, dog, emu"):
        densenet.explain(model, torch.randn(1, 3, 16, 16), targets="wolf")
    with pytest.raises(ValueError, match="got 2 targets for 1 images"):
        densenet.explain(model, torch.randn(1, 3, 16, 16), targets=[0, 1])
    with pytest.raises(ValueError, match=r"unknown method 'gradcam\+\+\+'"):
        densenet.explain(model, torch.randn(1, 3, 16, 16), method="gradcam+++")
    with pytest.raises(ValueError, match="no classifier"):
        CamModel(densenet.DenseNet(block_config=(2,), growth_rate=4, stem="cifar", num_classes=0))


def test_multi_label_targets_give_one_map_per_label():
    """The multi-label seam: a model whose meta says ``task: multi_label`` explains every label predicted present
    (at its saved threshold, 0.5 without one; the most probable when none is), or each requested label."""
    fake = types.SimpleNamespace(meta=ModelMeta(None, tuple(NAMES), task=MULTI_LABEL),
                                 config=types.SimpleNamespace(num_classes=3))
    probs = torch.tensor([[0.9, 0.2, 0.7], [0.1, 0.3, 0.2]])
    assert resolve_targets(fake, probs, None) == [(0, 0), (0, 2), (1, 1)]
    fake.meta = fake.meta.replace(thresholds=(0.95, 0.25, 0.5))  # the saved thresholds decide what is present
    assert resolve_targets(fake, probs, None) == [(0, 2), (1, 1)]
    assert resolve_targets(fake, probs, [["cat", "emu"], "dog"]) == [(0, 0), (0, 2), (1, 1)]
    single = types.SimpleNamespace(meta=types.SimpleNamespace(class_names=NAMES), config=fake.config)
    assert resolve_targets(single, probs, None) == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="one class per image"):
        resolve_targets(single, probs, [["cat", "emu"], "dog"])


def test_maps_go_back_to_the_file_resolution():
    """Resize-then-centre-crop inverted: a 30×60 image read at resize 15, crop 15 is seen as a 15×30 image cropped
    to columns 8…22 (torchvision's offset round(7.5) = 8), i.e. columns 16…45 of the file."""
    preprocessing = Preprocessing("RGB", 15, 15, (0.5,) * 3, (0.5,) * 3)
    back = to_image_resolution(np.ones((15, 15), np.float32), (30, 60), preprocessing)
    assert back.shape == (30, 60) and back.dtype == np.float32
    assert np.all(back[:, :15] == 0) and np.all(back[:, 47:] == 0)  # never seen by the network
    np.testing.assert_allclose(back[:, 17:45], 1.0)
    identity = np.random.default_rng(0).random((15, 15)).astype(np.float32)
    np.testing.assert_array_equal(to_image_resolution(identity, (15, 15), preprocessing), identity)


def test_pointing_game_known_answers():
    peak = np.zeros((10, 10))
    peak[3, 7] = 1
    assert points_inside(peak, (2, 6, 5, 9)) and not points_inside(peak, (4, 6, 8, 9))
    assert not points_inside(peak, (0, 0, 3, 10))  # bottom is exclusive
    assert not points_inside(np.zeros((10, 10)), (0, 0, 10, 10))  # a flat map points nowhere
    assert pointing_game([peak, peak], [(3, 7, 4, 8), (0, 0, 1, 1)]) == 0.5
    assert box_fraction([(0, 0, 5, 5), (0, 0, 10, 10)], (10, 10)) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="one box per heatmap"):
        pointing_game([peak], [])


def test_randomized_copy_redraws_every_weight():
    model = _tiny()
    fresh = randomized_copy(model, seed=5)
    assert fresh.config == model.config and fresh.meta == model.meta and not fresh.training
    for (name, old), new in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        if old.is_floating_point() and old.numel() > 1 and "running" not in name and old.std() > 0:
            assert not torch.equal(old, new), name


def test_volume_montage_slices_through_the_maximum():
    """The 3-D seam: a volume's map is drawn as its axial, coronal and sagittal slices through the maximum."""
    heatmap = np.zeros((6, 8, 10), np.float32)
    heatmap[2, 5, 7] = 1.0
    image = np.random.default_rng(0).random((6, 8, 10)).astype(np.float32)
    views = panels(image, heatmap)
    assert [label for label, _ in views] == ["axial 2", "coronal 5", "sagittal 7"]
    assert [view.shape for _, view in views] == [(8, 10, 3), (6, 10, 3), (6, 8, 3)]
    assert all(view.dtype == np.uint8 for _, view in views)
    with pytest.raises(ValueError, match="cannot draw"):
        panels(image, heatmap[:3])


def test_two_inputs_with_one_name_are_refused():
    from pathlib import Path

    from densenet.explain.cam import Explanation

    def one(index: int, path: str) -> Explanation:
        return Explanation(index, 0, "cat", 0.5, np.zeros((2, 2)), np.zeros((2, 2, 3)), Path(path))

    assert output_stems([one(0, "a/x.png"), one(1, "b/y.png")], False) == ["x", "y"]
    assert output_stems([one(0, "a/x.png"), one(0, "a/x.png")], True) == ["x_cat", "x_cat"]  # one image, 2 labels
    with pytest.raises(ValueError, match="would both write x.png"):
        output_stems([one(0, "a/x.png"), one(1, "b/x.png")], False)


class _Volumes(torch.nn.Module):
    """A stand-in 3-D classifier with DenseNet's interface (``forward_features`` → final BN-ReLU maps, ``classifier``,
    ``config``, ``meta``, ``check_input``) until volumes land in DenseNet itself."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.BatchNorm3d(6))
        self.classifier = torch.nn.Linear(6, 2)
        self.config = types.SimpleNamespace(num_classes=2)
        self.meta = types.SimpleNamespace(class_names=["healthy", "lesion"])

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"expected (N, 1, D, H, W), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))  # (N, 6, D, H, W)


def test_volume_maps_are_volumes_and_drawn_as_a_montage(tmp_path):
    """The 3-D seam end to end: pytorch-grad-cam's map of a volume has the volume's shape, and its overlay is the
    montage through the maximum."""
    model = _Volumes().eval()
    x = torch.randn(2, 1, 6, 8, 10, generator=torch.Generator().manual_seed(6))
    maps = compute_maps(model, x, [(0, 1), (1, 0)], "gradcam")
    assert maps.shape == (2, 6, 8, 10) and maps.min() >= 0 and maps.max() <= 1
    # a linear head on global pooling: Grad-CAM is CAM, ReLU(Σ_k W_ck A_k), min-max scaled (same resolution: no resize)
    features = model.forward_features(x).detach()
    cam = torch.einsum("k,nkdhw->ndhw", model.classifier.weight[1].detach(), features[:1]).clamp(min=0)
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    np.testing.assert_allclose(maps[0], cam[0].numpy(), atol=1e-5)
    views = panels(x[0, 0].numpy().clip(0, 1), maps[0])
    assert [label.split()[0] for label, _ in views] == ["axial", "coronal", "sagittal"]


def test_multi_label_models_explain_each_label_present(tmp_path):
    """The multi-label seam end to end: sigmoid probabilities, one map per label predicted present, files named
    ``<stem>_<label>``."""
    from densenet.explain.write import write_explanations

    model = _tiny()
    model.meta = ModelMeta(None, tuple(NAMES), task=MULTI_LABEL)  # as a multi-label run saves it
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([5.0, -5.0, 5.0]))  # cat and emu present, dog absent
        probabilities = torch.sigmoid(model(x))
    explanations = densenet.explain(model, x)
    present = [(i, c) for i in range(2) for c in range(3) if probabilities[i, c] >= 0.5]
    assert [(e.index, e.class_index) for e in explanations] == present
    assert [e.probability for e in explanations] == pytest.approx([float(probabilities[i, c]) for i, c in present])
    write_explanations(explanations, tmp_path, "gradcam", multi_label=True)
    assert {p.name for p in tmp_path.iterdir()} == {f"image{i}_{NAMES[c]}.{ext}" for i, c in present
                                                    for ext in ("png", "npy")}


def test_multi_label_file_names_take_labels_no_file_system_would(tmp_path):
    """A label such as ``effusion/left`` (a ``/``) or ``Pleural Effusion`` names a file as ``eval``'s ROC curves do:
    ``image0_effusion_left.png``, not a file inside a directory ``image0_effusion`` that does not exist."""
    from densenet.explain.write import write_explanations

    model = _tiny()
    model.meta = ModelMeta(None, ("effusion/left", "Pleural Effusion", "dog"), task=MULTI_LABEL)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([5.0, 5.0, -5.0]))
    explanations = densenet.explain(model, torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7)))
    write_explanations(explanations, tmp_path, "gradcam", multi_label=True)
    assert {p.name for p in tmp_path.iterdir()} == {f"image0_{stem}.{ext}" for stem in ("effusion_left",
                                                                                        "Pleural_Effusion")
                                                    for ext in ("png", "npy")}
