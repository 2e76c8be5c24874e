import pytest
import torch
import torchvision
from torch import nn

from mitools.checkpoint import load_checkpoint, save_checkpoint
from mitools.models import (
    MLP,
    EncoderSpec,
    MomentumEncoder,
    SSLModel,
    StateDictMismatchError,
    build_backbone,
    build_encoder_from_checkpoint_dict,
    cosine_momentum,
    count_parameters,
    strip_prefixes,
)


def test_resnet18_cifar_stem_shapes_and_stem():
    torch.manual_seed(0)
    spec = EncoderSpec(arch="resnet18", cifar_stem=True, projector_dims=[64, 16])
    model = SSLModel(spec)
    conv1 = model.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    assert isinstance(model.backbone.fc, nn.Identity)
    h, z = model(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, 512) and z.shape == (2, 16)
    assert model.feature_dim == 512


def test_resnet18_parameter_counts_match_torchvision_minus_fc():
    ref = torchvision.models.resnet18(weights=None)
    ref_no_fc = count_parameters(ref) - count_parameters(ref.fc)
    plain, dim = build_backbone(EncoderSpec(arch="resnet18", cifar_stem=False))
    assert dim == 512
    assert count_parameters(plain) == ref_no_fc
    cifar, _ = build_backbone(EncoderSpec(arch="resnet18", cifar_stem=True))
    # Only conv1 changes: 64 x 3 x (7*7 - 3*3) fewer weights.
    assert count_parameters(cifar) == ref_no_fc - 64 * 3 * (49 - 9)
    # Same state-dict layout as torchvision (without fc): checkpoints interoperate.
    ref_keys = {k for k in ref.state_dict() if not k.startswith("fc.")}
    assert set(plain.state_dict()) == ref_keys


def test_resnet50_feature_dim_and_in_channels():
    net, dim = build_backbone(EncoderSpec(arch="resnet50", cifar_stem=False, in_channels=1))
    assert dim == 2048
    assert net.conv1.in_channels == 1 and net.conv1.kernel_size == (7, 7)
    ref = torchvision.models.resnet50(weights=None)
    diff = 64 * 3 * 49 - 64 * 1 * 49
    assert count_parameters(net) == count_parameters(ref) - count_parameters(ref.fc) - diff


def test_mlp_layout_matches_mio_reference():
    proj = MLP([512, 256, 128], bn=True, last_bn=True)
    kinds = [type(m) for m in proj]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    pred = MLP([128, 64, 128], bn=True, last_bn=False)
    assert [type(m) for m in pred] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert len(MLP([7])) == 0  # identity
    with pytest.raises(ValueError, match="positive widths"):
        MLP([4, 0])


@pytest.mark.parametrize("arch", ["small_cnn", "mlp"])
def test_small_encoders_on_digits_shapes(arch):
    spec = EncoderSpec(
        arch=arch,
        in_channels=1,
        widths=[16, 32],
        input_dim=64,
        projector_dims=[32, 8],
        predictor_dims=[16, 8],
    )
    model = SSLModel(spec)
    h, z = model(torch.randn(5, 1, 8, 8))
    assert h.shape == (5, 32) and z.shape == (5, 8)
    assert model.predict(z).shape == (5, 8)


def test_spec_validation_errors():
    with pytest.raises(ValueError, match="unknown arch"):
        EncoderSpec(arch="vit")
    with pytest.raises(ValueError, match="input_dim"):
        EncoderSpec(arch="mlp")
    with pytest.raises(ValueError, match="unknown EncoderSpec keys"):
        EncoderSpec.from_dict({"arch": "small_cnn", "bogus": 1})
    with pytest.raises(ValueError, match="no predictor"):
        SSLModel(EncoderSpec(arch="small_cnn", in_channels=1)).predict(torch.zeros(2, 128))
    # BYOL's predictor output is compared with the other view's projection: widths must agree
    with pytest.raises(ValueError, match=r"end in the projection dim 16 .*\[4096, 256\]"):
        EncoderSpec(arch="small_cnn", projector_dims=[32, 16], predictor_dims=[4096, 256])
    EncoderSpec(arch="small_cnn", projector_dims=[32, 16], predictor_dims=[64, 16])


def test_spec_round_trip_through_safe_checkpoint_rebuilds_identical_model(tmp_path):
    torch.manual_seed(0)
    spec = EncoderSpec(
        arch="small_cnn",
        in_channels=1,
        widths=[8, 16],
        projector_dims=[16, 4],
        predictor_dims=[8, 4],
    )
    model = SSLModel(spec)
    model.train()
    model(torch.randn(16, 1, 8, 8))  # move BN running stats away from their init
    model.eval()
    spec_dict = spec.to_dict()
    assert EncoderSpec.from_dict(spec_dict) == spec
    path = save_checkpoint(
        tmp_path / "ck.pt",
        {"model": model.state_dict(), "encoder_spec": spec_dict, "epoch": 1, "step": 10},
    )
    state = load_checkpoint(path)  # weights_only=True inside
    assert state["encoder_spec"] == spec_dict
    rebuilt = build_encoder_from_checkpoint_dict(state["encoder_spec"], state["model"])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        h0, z0 = model(x)
        h1, z1 = rebuilt(x)
    assert torch.equal(h0, h1) and torch.equal(z0, z1)
    backbone = build_encoder_from_checkpoint_dict(spec_dict, state["model"], backbone_only=True)
    with torch.no_grad():
        assert torch.equal(backbone(x), h0)


def test_prefixed_state_dicts_load():
    spec = EncoderSpec(arch="mlp", input_dim=6, widths=[5], projector_dims=[3])
    model = SSLModel(spec).eval()
    sd = model.state_dict()
    ddp_compiled = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    rebuilt = build_encoder_from_checkpoint_dict(spec, ddp_compiled)
    x = torch.randn(3, 6)
    assert torch.equal(rebuilt(x)[1], model(x)[1])
    # A bare backbone saved by other code under "encoder."
    enc = {f"encoder.{k}": v for k, v in model.backbone.state_dict().items()}
    bb = build_encoder_from_checkpoint_dict(spec, enc, backbone_only=True)
    assert torch.equal(bb(x), model(x)[0])


def test_strip_prefixes_only_strips_shared_prefixes():
    t = torch.zeros(1)
    assert strip_prefixes({"module.backbone.a": t, "module.backbone.b": t}) == {"a": t, "b": t}
    assert strip_prefixes({"_orig_mod.module.x": t}) == {"x": t}
    mixed = {"backbone.a": t, "projector.b": t}
    assert strip_prefixes(mixed) == mixed
    assert strip_prefixes({"a.b": t}) == {"a.b": t}
    assert strip_prefixes({}) == {}


def test_mismatched_architecture_error_names_keys():
    small = SSLModel(EncoderSpec(arch="small_cnn", in_channels=3, projector_dims=[8])).state_dict()
    spec18 = EncoderSpec(arch="resnet18", projector_dims=[8])
    with pytest.raises(StateDictMismatchError) as info:
        build_encoder_from_checkpoint_dict(spec18, small)
    msg = str(info.value)
    assert "missing keys" in msg and "backbone.conv1.weight" in msg
    assert "unexpected keys" in msg and "backbone.0.weight" in msg
    assert isinstance(info.value, ValueError)
    # Same layout, other widths: named as a shape mismatch.
    narrow = SSLModel(EncoderSpec(arch="small_cnn", widths=[4, 8, 16], projector_dims=[8]))
    with pytest.raises(
        StateDictMismatchError,
        match=r"shape mismatches.*backbone\.7\.weight: stored \(16, 8, 3, 3\) vs model \(32",
    ):
        build_encoder_from_checkpoint_dict(
            EncoderSpec(arch="small_cnn", widths=[4, 8, 32], projector_dims=[8]),
            narrow.state_dict(),
        )


def test_momentum_encoder_ema_matches_manual_update():
    torch.manual_seed(0)
    spec = EncoderSpec(arch="mlp", input_dim=4, widths=[6], projector_dims=[5, 3])
    online = SSLModel(spec)
    target = MomentumEncoder(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():  # make online and target differ
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before_t = {k: v.clone() for k, v in target.state_dict().items()}
    online_sd = online.state_dict()
    m = 0.9
    target.update(online, m)
    after = target.state_dict()
    param_names = {n for n, _ in target.named_parameters()}
    for name in param_names:
        expected = m * before_t[name] + (1 - m) * online_sd[name]
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-7)
    # Default buffers="own": running stats untouched by update().
    for name in before_t:
        if name not in param_names:
            assert torch.equal(after[name], before_t[name])
    # m = 1 keeps the target, m = 0 copies the online network.
    frozen = {k: v.clone() for k, v in after.items()}
    target.update(online, 1.0)
    assert all(torch.equal(target.state_dict()[k], frozen[k]) for k in frozen)
    target.update(online, 0.0)
    for name in param_names:
        assert torch.equal(target.state_dict()[name], online_sd[name])


def test_momentum_encoder_buffer_modes():
    spec = EncoderSpec(arch="mlp", input_dim=4, widths=[6], projector_dims=[3])
    online = SSLModel(spec)
    online.train()
    online(torch.randn(8, 4) * 3 + 1)
    for mode in ("copy", "ema"):
        target = MomentumEncoder(online, buffers=mode)
        rm_t = target.backbone[1][1].running_mean.clone()
        online(torch.randn(8, 4) * 3 + 1)
        rm_o = online.backbone[1][1].running_mean
        target.update(online, 0.5)
        expected = rm_o if mode == "copy" else 0.5 * rm_t + 0.5 * rm_o
        torch.testing.assert_close(target.backbone[1][1].running_mean, expected)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.99)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.995)
    assert cosine_momentum(500, 100) == pytest.approx(1.0)
    assert cosine_momentum(0, 10, base=0.996, final=0.999) == pytest.approx(0.996)
    values = [cosine_momentum(k, 20) for k in range(21)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
