"""What one toy pretraining step sees (used by :mod:`i2v.toy.pretrain`): batches of synthetic clips in a seeded
order, their noised latents and targets, caption dropping, and the per-element loss weights (clean-distractor
frames, the moving object's positions)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from i2v.data.synthetic import BACKGROUND_DEFAULTS, SyntheticVideos, background_image

if TYPE_CHECKING:
    from i2v.pipeline.bundle import Bundle
    from i2v.toy.pretrain import PretrainConfig


class ClipStream:
    """Batches of distinct :class:`SyntheticVideos` clips in a seeded random order.

    ``next()`` -> ``(video (B, F, 3, H, W) in [-1, 1], captions list[str])``.
    """

    def __init__(self, cfg: PretrainConfig, workers: int = 0):
        n = max(cfg.n_items, (cfg.base_steps + cfg.ip_steps) * cfg.batch_size)
        background = {k: getattr(cfg, k) for k in BACKGROUND_DEFAULTS}
        self.data = SyntheticVideos(n, num_frames=cfg.num_frames, size=cfg.size, seed=cfg.seed,
                                    radius_range=tuple(cfg.radius_range), **background)
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
        self.batch, self.pos = cfg.batch_size, 0
        # workers > 0: batches are rendered ahead in that many processes (the same batches in the same order; for a
        # GPU, where rendering clips one by one would leave it waiting). The loader starts at the current ``pos``
        # on the first ``next()`` and again whenever ``pos`` was set from outside (a run resumed from its saved
        # state), so it always continues where the stream is. ``_batches``: (the pos it is at, its iterator).
        self.workers, self._batches = int(workers), None

    def batch_at(self, pos: int) -> tuple[list[int], torch.Tensor, list[str]]:
        """The clips ``pos .. pos + batch - 1`` of the order: (dataset indices, videos, captions)."""
        idx = [int(self.order[(pos + j) % len(self.order)]) for j in range(self.batch)]
        items = [self.data[i] for i in idx]
        return idx, torch.stack([it["video"] for it in items]), [it["text"] for it in items]

    def next(self) -> tuple[torch.Tensor, list[str]]:
        if self.workers:
            if self._batches is None or self._batches[0] != self.pos:   # first call, or ``pos`` was set since
                self._batches = (self.pos, iter(torch.utils.data.DataLoader(
                    _BatchesFrom(self, self.pos), batch_size=None, num_workers=self.workers, prefetch_factor=4,
                    collate_fn=lambda b: b)))
            idx, video, texts = next(self._batches[1])
            self._batches = (self.pos + self.batch, self._batches[1])
        else:
            idx, video, texts = self.batch_at(self.pos)
        self.pos += self.batch
        self.last = (idx, video)
        return video, texts

    def object_masks(self, latent_size: int) -> torch.Tensor:
        """Where the moving object is in each frame of the last batch ``next()`` returned, ``(B, 1, F, h, w)`` in
        {0, 1} at the latent size ``h = w = latent_size``: a latent position counts when any pixel it encodes
        differs from the clip's background image (the object, anti-aliased edges included)."""
        idx, video = self.last
        bg = torch.stack([background_image(self.data.scene(i)) for i in idx])        # (B, 3, H, W)
        diff = (video - bg[:, None]).abs().amax(2)                                     # (B, F, H, W)
        return F.adaptive_max_pool2d((diff > 1e-3).float(), latent_size)[:, None]


class _BatchesFrom(torch.utils.data.Dataset):
    """Batch ``j`` = the stream's ``batch_at(start + j * batch)`` (what ``ClipStream`` workers render)."""

    def __init__(self, stream: ClipStream, start: int):
        self.stream, self.start = stream, start

    def __len__(self) -> int:
        return 1 << 40   # endless, like the stream (the order wraps round)

    def __getitem__(self, j: int):
        return self.stream.batch_at(self.start + j * self.stream.batch)


def _drop_captions(captions: list[str], p: float, g: torch.Generator) -> list[str]:
    keep = torch.rand(len(captions), generator=g) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def _with_clean_distractor(z: torch.Tensor, z_t: torch.Tensor, p: float, g: torch.Generator):
    """Frame 0 of each video, with probability ``p``, replaced by the clean frame 0 of the next video of the batch
    -> (z_t, loss weights ``(B, 1, F, 1, 1)``: 0 on those frames, 1 elsewhere)."""
    b, f = z.shape[0], z.shape[2]
    weight = torch.ones(b, 1, f, 1, 1)
    if p <= 0 or b < 2:
        return z_t, weight
    pick = torch.rand(b, generator=g) < p
    if bool(pick.any()):
        z_t = z_t.clone()
        z_t[pick, :, 0] = z.roll(1, dims=0)[pick, :, 0]
        weight[pick, :, 0] = 0.0
    return z_t, weight


def masked_mse(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error weighted by ``weight`` (broadcast to ``out``): sum(w·err²) / sum(w); 0 drops an element."""
    weight = weight.to(out.device, out.dtype).expand_as(out)
    return ((out - target).pow(2) * weight).sum() / weight.sum()


def _noised(models: Bundle, video: torch.Tensor, offset: float, g: torch.Generator):
    """(z, z_t, t, target) for a batch (target = ``schedule.target``: ε or v): t ~ U{0..N-1} per video (shared by
    its frames), ε ~ N(0, I) plus ``offset`` x (one N(0, 1) per video and channel + one per frame and channel), see
    :class:`PretrainConfig`."""
    z = models.encode_video(video.to(next(models.unet.parameters()).device))
    b, c, f = z.shape[:3]
    # drawn on the CPU generator wherever the models are (the same draws on every device)
    t = torch.randint(0, models.schedule.num_train_timesteps, (b,), generator=g)
    eps = torch.randn(z.shape, generator=g)
    if offset:
        eps = eps + offset * (torch.randn(b, c, 1, 1, 1, generator=g) + torch.randn(b, c, f, 1, 1, generator=g))
    t, eps = t.to(z.device), eps.to(z.device)
    return z, models.schedule.add_noise(z, eps, t), t, models.schedule.target(z, eps, t)
