"""Other caches on the same model: diffusers' cache hooks and cache-dit, found before they run
beside relcache (two caches on one model give wrong samples and wrong stats)."""

from __future__ import annotations

from torch import nn

# diffusers' cache hooks by registry name prefix (diffusers/hooks/*.py), and what enabled them
DIFFUSERS_CACHE_HOOKS = {
    "fbc_": "FirstBlockCache",
    "taylorseer_cache": "TaylorSeerCache",
    "mag_cache_": "MagCache",
    "faster_cache_": "FasterCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "sea_cache_": "SeaCache",
}


def refuse_shared_modules(
    model: nn.Module, modules: dict[str, nn.Module], names: list[str]
) -> None:
    """A submodule another cached model shares (already wrapped) cannot be cached again."""
    for name in names:
        if getattr(modules[name].__dict__.get("forward"), "_relcache_wrapped", False):
            raise ValueError(
                f"module {name!r} of this {type(model).__name__} is already cached by relcache "
                "through another model that shares it; a shared submodule can be cached by one "
                "model only: relcache.remove() the other model first, or give each model its "
                "own copy (copy.deepcopy)"
            )


def foreign_caches(model: nn.Module) -> list[str]:
    """Names of the other caches enabled on ``model`` or its submodules (empty: none)."""
    found: list[str] = []
    config = getattr(model, "_cache_config", None)
    if config is not None:
        found.append(f"diffusers {type(config).__name__} (model.enable_cache)")
    for name, module in model.named_modules():
        registry = module.__dict__.get("_diffusers_hook")
        for hook in getattr(registry, "hooks", {}):
            kind = next((v for k, v in DIFFUSERS_CACHE_HOOKS.items() if hook.startswith(k)), None)
            if kind is not None and not any(kind in f for f in found):
                found.append(f"diffusers {kind} hook {hook!r} on {name or 'the model'}")
    if getattr(model, "_is_cached", False):
        found.append("cache-dit (cache_dit.enable_cache)")
    return found


def refuse_foreign_caches(model: nn.Module, when: str) -> None:
    """Raise when another cache is enabled on ``model`` (``when``: what relcache was doing)."""
    found = foreign_caches(model)
    if found:
        raise RuntimeError(
            f"{when}: another cache is enabled on this {type(model).__name__}: "
            f"{'; '.join(found)}. Two caches on one model give wrong samples and wrong stats; "
            "remove it first (diffusers: model.disable_cache(); cache-dit: "
            "cache_dit.disable_cache(pipe_or_model)) or use it instead of relcache"
        )


def refuse_enable_cache(model: nn.Module) -> None:
    """While relcache is applied, make diffusers' ``model.enable_cache`` refuse with the fix."""
    if not callable(getattr(model, "enable_cache", None)):
        return

    def enable_cache(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"relcache is applied to this {type(model).__name__}; two caches on one model give "
            "wrong samples. Call relcache.remove(model) before model.enable_cache(...), or keep "
            "relcache and do not enable diffusers' cache"
        )

    enable_cache._relcache_guard = True  # type: ignore[attr-defined]
    model.enable_cache = enable_cache


def allow_enable_cache(model: nn.Module) -> None:
    """Undo :func:`refuse_enable_cache`."""
    guard = model.__dict__.get("enable_cache")
    if getattr(guard, "_relcache_guard", False):
        del model.enable_cache
