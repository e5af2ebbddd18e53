from __future__ import annotations

import pytest
import torch

from anatldm.models.anatomy_head import AnatomicalSegmentationHead
from anatldm.models.denoiser import AnatomicalDenoiser

TINY = {"in_channels": 4, "channels": (8, 16), "attention_levels": (False, True), "norm_num_groups": 4,
        "num_head_channels": 4, "register_dim": 8, "register_levels": (0, 1), "register_heads": 2,
        "head_levels": (0, 1), "head_channels": 8}

# (num_registers, num_classes, input shape, mask size)
CASES = [
    (0, 0, (2, 4, 8, 8), (32, 32)),
    (4, 6, (2, 4, 8, 8), (32, 32)),
    (16, 3, (3, 4, 16, 16), (16, 16)),
]


@pytest.mark.parametrize("num_registers, num_classes, shape, mask_size", CASES)
def test_shapes(num_registers: int, num_classes: int, shape: tuple, mask_size: tuple) -> None:
    model = AnatomicalDenoiser(num_registers=num_registers, num_classes=num_classes, **TINY)
    out = model(torch.randn(shape), torch.randint(0, 1000, (shape[0],)), mask_size=mask_size,
                return_attention=True)
    assert out.sample.shape == shape
    if num_classes:
        assert out.anatomy_logits.shape == (shape[0], num_classes, *mask_size)
    else:
        assert out.anatomy_logits is None
    if num_registers:
        assert set(out.attention) == {"up0", "up1"}
        maps = out.attention["up0"]
        assert maps.shape == (shape[0], num_registers, *shape[2:])
        torch.testing.assert_close(maps.sum(1), torch.ones(shape[0], *shape[2:]))


def test_baseline_has_no_register_or_head_parameter() -> None:
    baseline = AnatomicalDenoiser(num_registers=0, num_classes=0, **TINY)
    names = [name for name, _ in baseline.named_parameters()]
    assert all(name.startswith("unet.") for name in names)
    full = AnatomicalDenoiser(num_registers=4, num_classes=6, **TINY)
    extra = {n for n, _ in full.named_parameters()} - set(names)
    assert extra and all(n.split(".")[0] in ("registers", "register_attention", "head") for n in extra)
    # the UNet is the same network in both: identical parameter names and shapes
    assert {n: p.shape for n, p in full.unet.named_parameters()} == \
        {n: p.shape for n, p in baseline.unet.named_parameters()}


def _wake_output_layer(model: AnatomicalDenoiser) -> None:
    """MONAI zero-initialises the UNet's output conv; give it weights so outputs can differ."""
    for p in model.unet.out.parameters():
        torch.nn.init.normal_(p, std=0.5)


def test_zero_init_register_attention_starts_from_the_plain_unet() -> None:
    torch.manual_seed(0)
    full = AnatomicalDenoiser(num_registers=4, num_classes=0, **TINY)
    _wake_output_layer(full)
    baseline = AnatomicalDenoiser(num_registers=0, num_classes=0, **TINY)
    baseline.unet.load_state_dict(full.unet.state_dict())
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    reference = baseline(x, t).sample
    assert reference.abs().mean() > 0.01
    torch.testing.assert_close(full(x, t).sample, reference)


def test_edited_registers_change_the_output() -> None:
    torch.manual_seed(0)
    model = AnatomicalDenoiser(num_registers=4, num_classes=0, **TINY)
    _wake_output_layer(model)
    for p in model.register_attention.parameters():  # leave the zero init behind
        torch.nn.init.normal_(p, std=0.5)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    reference = model(x, t).sample
    assert torch.equal(model(x, t, registers=model.registers.tokens * 1.0).sample, reference)
    assert not torch.allclose(model(x, t, registers=model.registers.tokens * 3.0).sample, reference)


@pytest.mark.parametrize("kwargs, match", [
    ({"register_levels": (5,)}, "register_levels \\[5\\] out of range"),
    ({"head_levels": (-1,)}, "head_levels \\[-1\\] out of range"),
    ({"attention_levels": (False,)}, "attention_levels has 1 entries"),
    ({"num_registers": -1}, "must be >= 0"),
])
def test_denoiser_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AnatomicalDenoiser(**{**TINY, "num_registers": 4, "num_classes": 3, **kwargs})


def test_head_fuses_levels() -> None:
    head = AnatomicalSegmentationHead(2, [8, 16], num_classes=5, hidden_channels=8, norm_num_groups=4)
    logits = head([torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)], output_size=(64, 64))
    assert logits.shape == (2, 5, 64, 64)
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        head([torch.randn(2, 8, 16, 16)], output_size=(64, 64))
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        AnatomicalSegmentationHead(2, [8], num_classes=1)


def test_head_learns_to_segment_from_features() -> None:
    """Overfit the whole denoiser's head on four fixed phantom-like masks: the loss must fall."""
    torch.manual_seed(0)
    from anatldm.losses import AnatomyLoss

    model = AnatomicalDenoiser(num_registers=4, num_classes=3, **TINY)
    x = torch.randn(4, 4, 8, 8)
    masks = torch.zeros(4, 32, 32, dtype=torch.long)
    masks[:, 4:16, 4:14] = 1
    masks[:, 18:28, 16:30] = 2
    x[:, 0, 1:4, 1:4] += 3  # the input carries the layout
    loss_fn, optimizer = AnatomyLoss(), torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.full((4,), 50)
    losses = []
    for _ in range(40):
        loss = loss_fn(model(x, t, mask_size=(32, 32)).anatomy_logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_read_write_starts_as_read_and_then_reads_the_image() -> None:
    torch.manual_seed(0)
    read = AnatomicalDenoiser(num_registers=4, num_classes=3, **TINY)
    torch.manual_seed(0)
    read_write = AnatomicalDenoiser(num_registers=4, num_classes=3, register_mode="read_write", **TINY)
    missing, _ = read_write.load_state_dict(read.state_dict(), strict=False)
    assert missing and all(name.startswith("register_write.") for name in missing)
    for module in (*read.register_attention.values(), *read_write.register_attention.values()):
        torch.nn.init.normal_(module.to_out.weight, std=0.1)  # the registers matter
    read_write.register_attention.load_state_dict(read.register_attention.state_dict())
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900])
    with torch.no_grad():
        # MONAI's UNet starts with a zero output conv: compare the head, which reads the features
        torch.testing.assert_close(read_write(x, t).anatomy_logits, read(x, t).anatomy_logits)  # zero-init write
        for module in read_write.register_write.values():
            torch.nn.init.normal_(module.to_out.weight, std=0.5)
        both = read_write(x, t, return_attention=True)
        alone = read_write(x[1:2], t[1:2], return_attention=True)
        reference = read(x, t).anatomy_logits
    assert not torch.allclose(both.anatomy_logits, reference, atol=1e-4)
    torch.testing.assert_close(alone.anatomy_logits, both.anatomy_logits[1:2], rtol=1e-4, atol=1e-5)  # batch-free
    # what a sample reads now depends on its own features: two inputs, different token updates
    tokens = read_write.register_write["up1"](torch.randn(2, 16, 4, 4), read_write.registers.tokens)
    assert tokens.shape == (2, 4, 8) and not torch.allclose(tokens[0], tokens[1])


def test_register_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="register_mode"):
        AnatomicalDenoiser(num_registers=4, register_mode="write", **TINY)


def test_head_upsampling_draws_logits_at_image_resolution() -> None:
    """Two learned x2 stages: the classifier itself runs at 4x the finest feature map (no
    interpolation of latent-grid logits), and a one-pixel-wide line can be fitted, which
    bilinear upsampling of 8x8 logits cannot draw."""
    torch.manual_seed(0)
    head = AnatomicalSegmentationHead(2, [8], num_classes=2, hidden_channels=8, norm_num_groups=4, upsample_stages=2)
    seen = []
    head.classifier.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))
    features = torch.randn(1, 8, 8, 8)
    assert head([features], output_size=(32, 32)).shape == (1, 2, 32, 32)
    assert seen == [(1, 2, 32, 32)]
    with pytest.raises(ValueError, match="upsample_stages must be >= 0"):
        AnatomicalSegmentationHead(2, [8], num_classes=2, upsample_stages=-1)


@pytest.mark.parametrize("stages", [0, 2])
def test_head_resolution_limits_thin_structures(stages: int) -> None:
    """Fit pairs of one-pixel lines two pixels apart (thin ribs) from fixed 8x8 features: the
    image-resolution head separates them (Dice > 0.9); bilinear upsampling of 8x8 logits is
    linear between latent-cell centres 4 pixels apart, so it cannot draw line-gap-line inside
    one cell and stays at <= 0.8 (merged lines), its ceiling (docs/method.md)."""
    from anatldm.losses import AnatomyLoss
    from anatldm.metrics.segmentation import per_class_dice

    torch.manual_seed(0)
    head = AnatomicalSegmentationHead(2, [8], num_classes=2, hidden_channels=16, norm_num_groups=4,
                                      upsample_stages=stages)
    features = torch.randn(1, 8, 8, 8)
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    for row in (6, 8, 14, 16, 22, 24):  # each pair inside one latent cell's linear segment
        mask[:, row, 2:30] = 1
    loss_fn, optimizer = AnatomyLoss(), torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        loss = loss_fn(head([features], output_size=(32, 32)), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    dice = per_class_dice(head([features], output_size=(32, 32)).argmax(1), mask, 2)[0, 0].item()
    assert dice > 0.9 if stages else dice < 0.85


def _register_model(dropout: float) -> AnatomicalDenoiser:
    """A model whose register path changes the output (zero init left behind)."""
    torch.manual_seed(0)
    model = AnatomicalDenoiser(num_registers=4, num_classes=3, register_dropout=dropout, **TINY)
    _wake_output_layer(model)
    for p in model.register_attention.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model


def _without_registers(model: AnatomicalDenoiser) -> AnatomicalDenoiser:
    """The same UNet and head with no register path at all."""
    plain = AnatomicalDenoiser(num_registers=0, num_classes=3, **TINY)
    plain.unet.load_state_dict(model.unet.state_dict())
    plain.head.load_state_dict(model.head.state_dict())
    return plain.train(model.training)


def test_register_dropout_one_drops_the_register_path_in_training() -> None:
    model = _register_model(1.0).train()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900])
    with_registers = _register_model(0.0).train()(x, t).sample
    dropped = model(x, t, mask_size=(8, 8))
    reference = _without_registers(model)(x, t, mask_size=(8, 8))
    assert not torch.allclose(with_registers, reference.sample)  # the registers matter here
    torch.testing.assert_close(dropped.sample, reference.sample)
    torch.testing.assert_close(dropped.anatomy_logits, reference.anatomy_logits)


def test_register_dropout_does_nothing_in_eval_and_draws_per_sample() -> None:
    x, t = torch.randn(8, 4, 8, 8), torch.full((8,), 300)
    kept = _register_model(0.0).eval()(x, t).sample
    assert torch.equal(_register_model(0.5).eval()(x, t).sample, kept)
    null = _register_model(0.0).eval()(x, t, use_registers=False).sample
    torch.testing.assert_close(null, _without_registers(_register_model(0.0)).eval()(x, t).sample)
    torch.manual_seed(1)
    mixed = _register_model(0.5).train()(x, t).sample
    train_kept = _register_model(0.0).train()(x, t).sample
    train_null = _register_model(0.0).train()(x, t, use_registers=False).sample
    dropped = [torch.allclose(mixed[i], train_null[i]) for i in range(8)]
    read = [torch.allclose(mixed[i], train_kept[i]) for i in range(8)]
    assert all(a != b for a, b in zip(dropped, read, strict=True))  # each sample one or the other
    assert any(dropped) and any(read)


def test_register_dropout_is_checked() -> None:
    with pytest.raises(ValueError, match="register_dropout must lie in"):
        AnatomicalDenoiser(num_registers=4, register_dropout=2.0, **TINY)


def _tiny_autoencoder():
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 16), latent_channels=4,
                         num_res_blocks=1, norm_num_groups=8, attention_levels=(False, False, False),
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False).eval()


def test_decoder_activations_are_the_decoders_own_pass() -> None:
    from anatldm.models.decoder_features import decoder_activation_channels, decoder_activations

    autoencoder, latents = _tiny_autoencoder(), torch.randn(2, 4, 8, 8)
    image, features = decoder_activations(autoencoder, latents)
    torch.testing.assert_close(image, autoencoder.decode(latents))
    assert [tuple(f.shape) for f in features] == [(2, 16, 16, 16), (2, 8, 32, 32)]  # coarsest first
    assert decoder_activation_channels(autoencoder, (4, 8, 8)) == [16, 8]


def test_head_reads_image_features_only_when_given() -> None:
    from anatldm.models.decoder_features import decoder_activations

    model = AnatomicalDenoiser(num_registers=4, num_classes=3, head_upsample_stages=2, head_image_channels=(16, 8),
                               **TINY).eval()
    assert model.reads_image_features
    latents, t = torch.randn(2, 4, 8, 8), torch.zeros(2, dtype=torch.long)
    features = decoder_activations(_tiny_autoencoder(), latents)[1]
    with torch.no_grad():
        plain = model(latents, t, mask_size=(32, 32)).anatomy_logits
        zeros = model(latents, t, mask_size=(32, 32), image_features=[torch.zeros_like(f) for f in features])
        read = model(latents, t, mask_size=(32, 32), image_features=features).anatomy_logits
    torch.testing.assert_close(zeros.anatomy_logits, plain)  # zeros add nothing: no bias
    assert read.shape == (2, 3, 32, 32) and not torch.allclose(read, plain)
    with pytest.raises(ValueError, match="expected 2 image feature maps, got 1"):
        model(latents, t, mask_size=(32, 32), image_features=features[:1])
    with pytest.raises(ValueError, match="image_channels names 1 feature maps for 2 upsampling stages"):
        AnatomicalSegmentationHead(2, [8], 3, 8, 4, upsample_stages=2, image_channels=(16,))
    assert not AnatomicalDenoiser(num_registers=4, num_classes=3, head_upsample_stages=2, **TINY).reads_image_features
