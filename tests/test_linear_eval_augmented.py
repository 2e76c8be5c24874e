"""The standard (augmented) linear-probe protocol: its training transform, the probe itself on
cases with a known answer, and the CLI switch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mitools.data import get_spec, probe_train_transform
from trainers.linear_eval import augmented_linear_probe


class _JitterDataset(torch.utils.data.Dataset):
    """Class centres plus fresh noise on every access (the "augmentation")."""

    def __init__(self, centres: torch.Tensor, labels: torch.Tensor, noise: float) -> None:
        self.centres, self.labels, self.noise = centres, labels, noise
        self.calls = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        self.calls += 1
        c = self.centres[self.labels[i]]
        return c + self.noise * torch.randn(c.shape), int(self.labels[i])


@pytest.mark.parametrize("name", ["digits", "cifar10", "stl10", "tiny_imagenet"])
def test_probe_train_transform_shape_range_and_randomness(name):
    spec = get_spec(name)
    s = spec.image_size
    g = torch.Generator().manual_seed(0)
    if name == "digits":
        img = torch.rand(1, 8, 8, generator=g)
    else:
        img = torch.randint(0, 256, (3, s, s), dtype=torch.uint8, generator=g)
    tf = probe_train_transform(name, normalize=False)
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(6)]
    assert all(o.shape == (spec.channels, s, s) and o.dtype == torch.float32 for o in outs)
    assert all(0.0 <= float(o.min()) and float(o.max()) <= 1.0 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # random crops differ
    names = [type(t).__name__ for t in tf.transforms]
    assert ("RandomHorizontalFlip" in names) is (name != "digits")  # digits are not mirrored


def test_augmented_probe_learns_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=g) * 4
    y = torch.arange(80) % 4
    train_ds = _JitterDataset(centres, y, noise=0.5)
    test_y = torch.arange(40) % 4
    test_x = centres[test_y] + 0.5 * torch.randn(40, 6, generator=g)
    acc = augmented_linear_probe(nn.Identity(), train_ds, test_x, test_y, epochs=5, batch_size=16,
                                 progress=False)  # fmt: skip
    assert acc == 100.0
    assert train_ds.calls == 5 * 80  # one fresh augmentation per image and epoch
    # Labels unrelated to the inputs: the probe cannot beat chance by much on held-out data.
    noise_ds = _JitterDataset(torch.zeros(4, 6), y, noise=1.0)
    noise_test = torch.randn(400, 6, generator=g)
    acc = augmented_linear_probe(nn.Identity(), noise_ds, noise_test, torch.arange(400) % 4,
                                 epochs=3, batch_size=16, progress=False)  # fmt: skip
    assert acc < 40.0


def test_augmented_probe_is_seeded_and_leaves_global_rng_alone():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 5, generator=g)
    y = torch.arange(30) % 3
    test_x, test_y = torch.randn(60, 5, generator=g), torch.arange(60) % 3
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    runs = [
        augmented_linear_probe(nn.Identity(), _JitterDataset(centres, y, 1.0), test_x, test_y,
                               epochs=2, batch_size=8, seed=7, progress=False)
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0] == runs[1]
    assert torch.equal(torch.rand(3), before)  # the global stream was not advanced
    with pytest.raises(ValueError, match="epochs"):
        augmented_linear_probe(nn.Identity(), _JitterDataset(centres, y, 1.0), test_x, test_y,
                               epochs=0)  # fmt: skip


def test_linear_eval_cli_augmented_protocol(tmp_path):
    from test_trainer import tiny_cfg

    from trainers import linear_eval
    from trainers.pretrain import train

    run = tmp_path / "run"
    train(tiny_cfg(run, ["train.epochs=1", "train.max_steps_per_epoch=1"]))
    out = tmp_path / "probe.json"
    args = ["--checkpoint", str(run / "last.pt"), "--labels-per-class", "10", "--protocol",
            "augmented", "--epochs", "3", "--knn-k", "20", "--out", str(out)]  # fmt: skip
    assert linear_eval.main(args) == 0
    res = json.loads(out.read_text())
    assert res["solver"] == "sgd-augmented" and res["n_train"] == 100
    assert 10.0 < res["linear_top1"] <= 100.0
