"""The paper's optimiser: fully decoupled AdamW (l3m's AdamLH) and warmup + cosine to a floor."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_map_with_path

NO_DECAY = ("bias", "pos_embed", "norm", "logit_scale", "cls_token", "positional_embedding")


def decays(path: str) -> bool:
    """Weight decay applies to matrices, not to norms, biases, position embeddings or the BOS token."""
    return not any(k in path for k in NO_DECAY)


def schedule(peak: float, warmup: int, total: int, floor: float):
    """Linear warmup from ~0 to `peak` over `warmup` steps, then cosine down to `floor` at `total`."""
    warm = optim.linear_schedule(min(1e-6, peak), peak, max(warmup, 1))
    cos = optim.cosine_decay(peak, max(total - warmup, 1), end=floor)
    return optim.join_schedules([warm, cos], [max(warmup, 1)])


class DecoupledAdamW(optim.Adam):
    """Adam, and before each step p <- p * (1 - wd * lr_t / lr_peak): decay follows the schedule's
    shape but not its scale, as in the paper's "fully decoupled" AdamW."""

    def __init__(
        self, learning_rate, peak_lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8, scale=None
    ):
        """scale: None, or parameter path -> learning-rate multiplier (layer-wise decay): that
        parameter's whole step (decay and update) is scaled by it."""
        super().__init__(learning_rate=learning_rate, betas=list(betas), eps=eps)
        self.peak_lr, self.weight_decay, self.scale = peak_lr, weight_decay, scale
        self.schedule = learning_rate if callable(learning_rate) else (lambda step: mx.array(learning_rate))

    def apply_gradients(self, gradients: dict, parameters: dict):
        before = parameters
        if self.weight_decay:
            lr = self.schedule(self.step)  # this step's rate, as Adam's own update sets it
            factor = 1.0 - self.weight_decay * lr / self.peak_lr
            # walk the gradients' tree: `parameters` may be a whole module with non-array members
            parameters = tree_map_with_path(
                lambda path, g, p: p * factor.astype(p.dtype) if decays(path) else p, gradients, parameters
            )
        after = super().apply_gradients(gradients, parameters)
        if self.scale is None:
            return after
        # p + s (p' - p): the step a learning rate s times smaller takes (Adam's step is linear in lr)
        return tree_map_with_path(
            lambda path, g, p, q: q if self.scale(path) == 1.0 else p + self.scale(path) * (q - p),
            gradients, before, after,
        )  # fmt: skip
