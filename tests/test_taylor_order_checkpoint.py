"""The order study reads real embedding covariances from a trainer checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import taylor_order
from mitools.checkpoint import save_checkpoint
from mitools.data import build_dataset
from mitools.data.augment import BatchAugment, loader_transform, preset_for
from mitools.models import EncoderSpec, SSLModel


def _write_checkpoint(path):
    torch.manual_seed(0)
    spec = EncoderSpec(arch="small_cnn", in_channels=1, widths=[8, 16, 16], projector_dims=[12])
    model = SSLModel(spec)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "encoder_spec": spec.to_dict(),
            "config": {"data": {"name": "digits", "root": None}},
            "epoch": 1,
            "step": 10,
        },
    )
    return model.eval()


def test_trainer_checkpoint_embeds_two_augmented_views(tmp_path):
    path = tmp_path / "last.pt"
    model = _write_checkpoint(path)
    views = taylor_order.load_embeddings(path)
    assert len(views) == 2 and views[0].shape == (359, 12) and views[0].dtype == torch.float64

    # Independent recomputation: the same images, augmentation seed and encoder by hand.
    data = build_dataset("digits", None, "val", transform=loader_transform("digits"))
    images = torch.stack([data[i][0] for i in range(len(data))])
    x1, x2 = BatchAugment(preset_for("digits"))(images, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [model.projector(model.backbone(x)).double() for x in (x1, x2)]
    torch.testing.assert_close(views[0], expected[0])
    torch.testing.assert_close(views[1], expected[1])
    assert not torch.allclose(views[0], views[1])  # two different augmentations


def test_order_study_runs_on_a_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    _write_checkpoint(path)
    df = taylor_order.run(quick=True, out=tmp_path / "res", checkpoint=path)
    real = df[df.source == "last.pt"]
    assert set(real.quantity) == {"logdet", "mi"}
    order_rows = real[(real.study == "order") & real.exact.notna()]
    assert len(order_rows) > 0
    assert order_rows.exact.notna().all()


def test_a_bad_checkpoint_fails_before_the_studies(tmp_path, monkeypatch):
    from analysis._common import BadInput

    def no_study(*args, **kwargs):
        raise AssertionError("the order study started before the checkpoint was read")

    monkeypatch.setattr(taylor_order, "geometric_spectrum", no_study)
    bad = tmp_path / "emb.npy"
    np.save(bad, np.zeros((3, 4, 5)))  # neither (N, d) nor (2, N, d)
    with pytest.raises(BadInput, match="shape"):
        taylor_order.run(quick=True, out=tmp_path / "res", checkpoint=bad)
    with pytest.raises(BadInput, match="cannot read"):
        taylor_order.run(quick=True, out=tmp_path / "res", checkpoint=tmp_path / "missing.pt")
