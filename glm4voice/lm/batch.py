"""Many conversations' replies in one LM step: their KV caches side by side, left-padded, one forward per id.

    batch = ReplyBatch(lm)
    batch.join(reply)          # a ReplyState after its own prefill; its conversation's cache moves in
    ...sample and accept each reply's id...
    batch.step()               # one forward over every reply in the batch: each gets its next logits
    batch.leave(reply)         # its cache goes back to its conversation (the next turn continues from it)

Rows have different lengths: each row's keys and values sit at the right end of a shared [B, heads, L, dim]
cache, with a [B, L] mask of the real positions, and each row's own position ids (RoPE), so a row computes
what it would alone (up to float rounding of the padded matmuls; tested). Joining or leaving re-packs the
cache; between those, a step only appends one column, as a single conversation's cache does.
"""

from __future__ import annotations

import torch

from .generate import ReplyState


class ReplyBatch:
    def __init__(self, lm):
        from transformers import DynamicCache

        self.lm = lm
        self._cache_cls = DynamicCache
        self.rows: list[ReplyState] = []
        self.lengths: list[int] = []  # real ids cached per row
        self.cache = None  # DynamicCache of [B, heads, L, dim] per layer
        self.mask: torch.Tensor | None = None  # [B, L]: 1 where a row has a real id

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, reply: ReplyState) -> bool:
        return any(r is reply for r in self.rows)

    def _layers(self, cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        cache = self._cache_cls(config=self.lm.config)
        for i, (k, v) in enumerate(layers):
            cache.update(k, v, i)
        return cache

    def join(self, reply: ReplyState) -> None:
        """Add a prefilled reply; its conversation's cache moves into the batch until `leave`."""
        own = self._layers(reply.conv.cache)
        length = own[0][0].shape[2]
        width = max([length, *self.lengths]) if self.rows else length
        device = own[0][0].device
        layers = []
        for i, (k, v) in enumerate(own):
            k, v = _left_pad(k, width), _left_pad(v, width)
            if self.rows:
                bk, bv = self._layers(self.cache)[i]
                k, v = torch.cat([_left_pad(bk, width), k]), torch.cat([_left_pad(bv, width), v])
            layers.append((k, v))
        row_mask = torch.zeros(1, width, dtype=torch.long, device=device)
        row_mask[:, width - length :] = 1
        mask = row_mask if not self.rows else torch.cat([_left_pad(self.mask, width), row_mask])
        cache = self._new_cache(layers)
        self.mask, self.cache = mask, cache  # only now: a failure above leaves the batch as it was
        self.rows.append(reply)
        self.lengths.append(length)
        reply.conv.drop_cache()  # empty while its ids live here

    def leave(self, reply: ReplyState) -> None:
        """Remove a reply; its conversation gets its own cache back (its real columns only)."""
        i = next(n for n, r in enumerate(self.rows) if r is reply)
        length = self.lengths[i]
        layers = self._layers(self.cache)
        width = self.mask.shape[1]
        mine = slice(width - length, width)
        own = self._new_cache([(k[i : i + 1, :, mine].clone(), v[i : i + 1, :, mine].clone())
                               for k, v in layers])  # fmt: skip
        rest = [n for n in range(len(self.rows)) if n != i]
        if rest:
            new_width = max(self.lengths[n] for n in rest)  # columns every remaining row pads can go
            index = torch.tensor(rest, device=self.mask.device)
            cols = slice(width - new_width, width)
            mask = self.mask.index_select(0, index)[:, cols]
            cache = self._new_cache([(k.index_select(0, index)[:, :, cols], v.index_select(0, index)[:, :, cols])
                                     for k, v in layers])  # fmt: skip
        else:
            mask, cache = None, None
        # only now, all at once: a failure above leaves the batch as it was
        reply.conv.cache, self.mask, self.cache = own, mask, cache
        del self.rows[i], self.lengths[i]

    @torch.inference_mode()
    def step(self) -> None:
        """Run every row's last accepted id; each row's `logits` become its next id's."""
        device = self.mask.device
        ids = torch.tensor([[r.last_id] for r in self.rows], device=device)
        positions = torch.tensor([[n] for n in self.lengths], device=device)
        mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=device)], dim=1)
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache,
                      use_cache=True, logits_to_keep=1)  # fmt: skip
        self.mask = mask  # after the forward: a failed step must not widen the mask (the caches did not grow)
        logits = out.logits[:, -1]
        for n, reply in enumerate(self.rows):
            reply.logits = logits[n]
            self.lengths[n] += 1


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the last-but-one axis (keys/values [B, H, L, D]) or the last (masks [B, L])."""
    axis = 2 if x.dim() == 4 else 1
    missing = width - x.shape[axis]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = missing
    return torch.cat([x.new_zeros(shape), x], dim=axis)
