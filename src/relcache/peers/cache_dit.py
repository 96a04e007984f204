"""cache-dit's DBCache (dual block cache), with and without its TaylorSeer calibrator, as peers.

``cache_dit.enable_cache(transformer, ...)`` picks cache-dit's own DiT adapter for a bare
``DiTTransformer2DModel`` (Pattern_3 over ``transformer_blocks`` + its DiT patch functor); there is
no pipeline, so the context is persistent and ``refresh_context`` starts each generation (its
``num_inference_steps`` auto-refresh counts the next generation's first call into the previous
one: left unset). CFG runs as one batched call, so one decision covers the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from relcache.peers import Knob, Peer, PeerUnavailable, register_peer

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # read at its import; it logs every call


@dataclass
class DBCachePeer(Peer):
    """DBCache: the first Fn blocks always run; the rest reuse their residual while the first
    blocks' residual changes by less than ``residual_diff_threshold`` since the last full step."""

    library: str = "cache-dit"
    taylorseer_order: int | None = None  # the TaylorSeer calibrator's order (None: off)

    def warmup_knobs(self, steps: int, warmup: int) -> dict[str, Any]:
        """Its warmup (no cap on cached steps is set by default)."""
        return {"max_warmup_steps": warmup}

    def apply(self, transformer: nn.Module, steps: int) -> None:
        """``cache_dit.enable_cache`` on the bare transformer."""
        import cache_dit

        depth = len(transformer.transformer_blocks)
        config = {**_DEFAULTS, **self.knobs}
        fn, bn = config["Fn_compute_blocks"], config["Bn_compute_blocks"]
        if fn + bn >= depth:
            raise PeerUnavailable(
                f"Fn_compute_blocks={fn} and Bn_compute_blocks={bn} leave none of the {depth} "
                "blocks to cache; use fewer"
            )
        calibrator = None
        if self.taylorseer_order is not None:
            calibrator = cache_dit.TaylorSeerCalibratorConfig(
                taylorseer_order=self.taylorseer_order
            )
        cache_dit.enable_cache(
            transformer,
            cache_config=cache_dit.DBCacheConfig(**config),
            calibrator_config=calibrator,
        )

    def remove(self, transformer: nn.Module) -> None:
        """``cache_dit.disable_cache``: the original computation (its patched forward is
        equivalent: outputs equal to the uncached model's, tested)."""
        import cache_dit

        cache_dit.disable_cache(transformer)

    def reset(self, transformer: nn.Module) -> None:
        """``refresh_context``: step counter, buffers and calibrators start afresh."""
        import cache_dit

        cache_dit.refresh_context(transformer)

    def cache_roots(self, transformer: nn.Module) -> list[Any]:
        """cache-dit's context manager (buffers and calibrators per context)."""
        return [getattr(transformer, "_context_manager", None)]

    def summary(self, transformer: nn.Module) -> dict[str, Any]:
        """The last generation's cached steps, as cache-dit reports them."""
        import cache_dit

        stats = cache_dit.summary(transformer, details=False, logging=False)
        return {"cached_steps": list(stats[-1].cached_steps)} if stats else {}


# DBCacheConfig's documented defaults (Fn 8, Bn 0, threshold 0.08, 8 warmup steps), except Fn:
# 8 would cover every block of an 8-block DiT-FM; F1B0 is cache-dit's own fastest documented setup.
_DEFAULTS = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "enable_separate_cfg": False}
# searched with a budget (with 2 or 4 warmup steps): F1 or F2 x B0 or B1, F1B0 first
_SPACE = {"Fn_compute_blocks": (1, 2), "Bn_compute_blocks": (0, 1)}
_SEARCHED = (
    "searched: F1 or F2 x B0 or B1 x 2 or 4 warmup steps, the residual threshold tuned at each "
    "point (no cap on cached steps, its default)"
)

register_peer(
    DBCachePeer(
        name="cachedit-dbcache",
        label="cache-dit DBCache",
        knob=Knob("residual_diff_threshold", 1e-3, 4.0),
        space=_SPACE,
        warmups=(4,),
        note="defaults: DBCacheConfig's, but F1B0 (its default F8 covers all 8 blocks of "
        f"DiT-FM); {_SEARCHED}",
    )
)
register_peer(
    DBCachePeer(
        name="cachedit-dbcache-taylorseer",
        label="cache-dit DBCache+TaylorSeer",
        taylorseer_order=1,
        knob=Knob("residual_diff_threshold", 1e-3, 4.0),
        space=_SPACE,
        warmups=(4,),
        note=f"as DBCache, with its TaylorSeer calibrator (order 1, its default); {_SEARCHED}",
    )
)
