"""Video Swin's window attention through scaled_dot_product_attention computes torchvision's function."""
import pytest
import torch
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

from losh.models.shared.window_attention import SDPAShiftedWindowAttention3d, shift_mask


def _pair(window, shift, dim=32, heads=4, seed=0):
    torch.manual_seed(seed)
    reference = ShiftedWindowAttention3d(dim, list(window), list(shift), heads)
    ours = SDPAShiftedWindowAttention3d(dim, list(window), list(shift), heads)
    ours.load_state_dict(reference.state_dict())
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("window, shift, size", [
    ((2, 4, 4), (0, 0, 0), (4, 8, 8)),       # plain windows
    ((2, 4, 4), (1, 2, 2), (4, 8, 8)),       # shifted windows
    ((2, 4, 4), (1, 2, 2), (3, 10, 7)),      # padded to whole windows
    ((8, 7, 7), (4, 3, 3), (5, 6, 9)),       # the window adapts where the input is smaller (no shift there)
])
def test_float32_equals_torchvision(window, shift, size):
    reference, ours = _pair(window, shift)
    x = torch.randn(2, *size, 32)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=2e-6)


def test_bf16_autocast_equals_torchvision_to_bf16_noise():
    reference, ours = _pair((2, 4, 4), (1, 2, 2))
    x = torch.randn(2, 4, 8, 8, 32)
    exact = reference(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(x)
    assert got.dtype == torch.bfloat16
    assert (got.float() - exact).abs().max() <= 0.02 * exact.abs().max()


def test_gradients_equal_torchvision():
    reference, ours = _pair((2, 4, 4), (1, 2, 2))
    reference.train(), ours.train()
    x = torch.randn(1, 4, 8, 8, 32)
    reference(x).square().sum().backward()
    ours(x).square().sum().backward()
    for (name, a), b in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_shift_masks_are_made_once_per_shape():
    _, ours = _pair((2, 4, 4), (1, 2, 2))
    ours(torch.randn(1, 4, 8, 8, 32))
    ours(torch.randn(2, 4, 8, 8, 32))          # another batch, the same padded size
    ours(torch.randn(1, 4, 12, 8, 32))
    assert len(ours._shift_masks) == 2
    mask = shift_mask((4, 8, 8), [2, 4, 4], [1, 2, 2], torch.device("cpu"))
    assert mask.shape == (2 * 2 * 2, 32, 32) and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all()                 # the first window holds one region only
