"""RaftFlow wrapper on CPU with random weights: shapes, padding, input range, batching, weight loading."""
import pytest
import torch
from torchvision.models.optical_flow import raft_large

from i2v.metrics.flow import RAFT_FILE, FlowScore, RaftConfig, RaftFlow, WarpingError, pad, sintel_pads

UPDATES = 2


@pytest.fixture(scope="module")
def raft_file(tmp_path_factory):
    torch.manual_seed(123)
    model = raft_large(weights=None, progress=False)
    path = tmp_path_factory.mktemp("raft") / RAFT_FILE
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def raft(raft_file):
    return RaftFlow(RaftConfig(weights=str(raft_file), num_flow_updates=UPDATES, batch_size=2))


def test_loaded_weights_reproduce_the_torchvision_model(raft_file, raft):
    ref = raft_large(weights=None, progress=False)
    ref.load_state_dict(torch.load(raft_file, weights_only=True))
    ref.eval()
    a, b = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        want = ref(a, b, num_flow_updates=UPDATES)[-1]
    got = raft(a, b)
    assert got.shape == (2, 2, 128, 128)
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


def test_padding_and_unpadding_match_manual_padding(raft):
    a, b = torch.rand(1, 3, 124, 130) * 2 - 1, torch.rand(1, 3, 124, 130) * 2 - 1
    got = raft(a, b)
    assert got.shape == (1, 2, 124, 130)
    pads = sintel_pads(124, 130, 8, 128)
    assert pads == (3, 3, 2, 2)
    with torch.no_grad():
        full = raft.model(pad(a, pads), pad(b, pads), num_flow_updates=UPDATES)[-1]
    torch.testing.assert_close(got, full[..., 2:126, 3:133], atol=1e-4, rtol=1e-4)


def test_small_frames_are_padded_up_to_min_size(raft):
    a = torch.rand(1, 3, 64, 40) * 2 - 1
    out = raft(a, a.clone())
    assert out.shape == (1, 2, 64, 40)
    assert torch.isfinite(out).all()


def test_batching_does_not_change_results(raft):
    a, b = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    together = raft(a, b)                                      # batch_size=2: one forward
    apart = torch.cat([raft(a[:1], b[:1]), raft(a[1:], b[1:])])
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together[0], together[1])        # the two pairs really differ


def test_rejects_out_of_range_and_bad_shapes(raft):
    x = torch.rand(1, 3, 64, 64) * 255
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        raft(x, x)
    with pytest.raises(ValueError, match="two"):
        raft(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 72))


def test_missing_weights_error_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=RAFT_FILE):
        RaftFlow(RaftConfig(weights=str(tmp_path / "nope.pth")))
    with pytest.raises(FileNotFoundError, match="raft_large_C_T_V1"):
        RaftFlow(RaftConfig(weights=None))
    assert "RANDOM" in RaftFlow(RaftConfig(weights=None, allow_random=True)).description


def test_princeton_checkpoint_is_refused(tmp_path):
    p = tmp_path / "raft-things.pth"
    torch.save({"module.fnet.conv1.weight": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="princeton"):
        RaftFlow(RaftConfig(weights=str(p)))


def test_metrics_run_on_raft(raft):
    video = torch.rand(1, 2, 3, 64, 64) * 2 - 1
    fs = FlowScore(raft).score(video)["flow_score"]
    we = WarpingError(raft, raft_input="fixed").score(video)["warping_error"]
    assert fs.shape == (1,) and we.shape == (1,)
    assert torch.isfinite(fs).all() and (fs > 0).all() and torch.isfinite(we).all() and (we >= 0).all()
