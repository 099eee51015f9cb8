"""The VQ bottleneck as the paper trains it: EMA with Laplace smoothing, restarts, commitment, straight-through."""

from __future__ import annotations

import torch

from glm4voice.tokenizer.vq import VectorQuantizer


def tiny_vq() -> VectorQuantizer:
    vq = VectorQuantizer(codebook_size=3, dim=2, decay=0.9, eps=1e-5, restart_every=2, commit=0.25, loss_scale=10.0)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    vq.ema_weight.copy_(vq.codebook)
    vq.ema_count.fill_(1.0)
    return vq


def test_one_ema_update_by_hand():
    vq = tiny_vq()
    h = torch.tensor([[[1.0, 0.0], [9.0, 1.0], [8.0, 0.0], [100.0, 100.0]]])  # the last frame is padding
    mask = torch.tensor([[True, True, True, False]])
    out = vq(h, mask, update=True)
    assert out.codes[0, :3].tolist() == [0, 1, 1] and out.used == 2
    # by hand: n = [1, 2, 0], s = [[1, 0], [17, 1], [0, 0]]; decay 0.9
    count = torch.tensor([0.9 + 0.1 * 1, 0.9 + 0.1 * 2, 0.9])
    total = count.sum()
    count = (count + 1e-5) / (total + 3 * 1e-5) * total
    weight = torch.tensor([[0.9 * 0 + 0.1 * 1, 0.0], [0.9 * 10 + 0.1 * 17, 0.1 * 1], [0.0, 9.0]])
    assert torch.allclose(vq.ema_count, count) and torch.allclose(vq.ema_weight, weight)
    assert torch.allclose(vq.codebook, weight / count[:, None])
    # the padding frame (100, 100) touched nothing: code 2 got no frame


def test_restart_dead_codes_only_as_many_as_frames():
    vq = tiny_vq()
    vq.ema_count.copy_(torch.tensor([1.0, 0.5, 0.7]))  # threshold 0.9 ** 2 = 0.81: codes 1 and 2 are dead
    h = torch.tensor([[[3.0, 4.0], [7.0, 7.0]]])
    one_frame = torch.tensor([[True, False]])  # one unpadded frame for two dead codes: one restarts
    assert vq.restart_dead(h, one_frame) == 1
    restarted = [k for k in (1, 2) if torch.equal(vq.codebook[k], torch.tensor([3.0, 4.0]))]
    assert len(restarted) == 1 and vq.ema_count[restarted[0]] == 1.0
    assert torch.equal(vq.ema_weight[restarted[0]], torch.tensor([3.0, 4.0]))
    assert vq.restart_dead(h, torch.tensor([[False, False]])) == 0  # no frames: nothing restarts, no error
    assert vq.restart_dead(h, torch.tensor([[True, True]])) == 1  # the other dead code
    assert (vq.ema_count >= 0.81).all()


def test_commitment_loss_and_straight_through_gradients():
    vq = tiny_vq()
    h = torch.tensor([[[1.0, 2.0], [9.0, 1.0], [5.0, 5.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    out = vq(h, mask)
    q = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    diff = h.detach()[0, :2] - q
    expected = 10.0 * 0.25 * (diff**2).mean(-1).sum() / 2
    assert torch.allclose(out.loss, expected)
    assert torch.allclose(out.quantized[0, :2], q)  # forward: the codes' vectors
    (out.loss + out.quantized.sum()).backward()
    # d loss / d h = scale * commit * 2 (h - q) / (dims * frames) on real frames, 0 on padding; + 1 straight through
    grad = torch.zeros(3, 2)
    grad[:2] = 10.0 * 0.25 * 2 * diff / (2 * 2)
    assert torch.allclose(h.grad[0], grad + 1.0)
    assert not vq.codebook.requires_grad  # the codebook moves by EMA only


def test_usage():
    vq = tiny_vq()
    used, perplexity = vq.usage(torch.tensor([0, 0, 1, 1]))
    assert abs(used - 2 / 3) < 1e-6 and abs(perplexity - 2.0) < 1e-5
