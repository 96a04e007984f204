"""Context parallelism (issue 22): two gloo CPU processes give one process's outputs and schedules.

One spawn of two ranks runs every case (tiny FLUX and Wan under diffusers' Ulysses 2, ring 2 and
an uneven Ulysses split; the diffusers DiT with its CFG branches on different ranks; the
reductions switched off) and hands back numbers only; the tests below read them. Test-only shims
make diffusers' context parallelism run on CPUs: the accelerator lookup that builds its device
mesh points at the CPU, ring attention gets an exact attention kernel that also returns the
log-sum-exp (diffusers' ring needs one: flash or cuDNN on a GPU), and gloo's all_gather, which
needs equal shapes, pads uneven shards (NCCL gathers them as they are).
"""

from __future__ import annotations

import datetime
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

import relcache
from relcache.caching import parallel

pytest.importorskip("diffusers")

WORLD = 2
TOL = 1e-5
STEPS = 8  # tests.test_diffusers.STEPS, the pipelines' step count
MODES = {
    "ulysses": {"ulysses_degree": 2},
    "ring": {"ring_degree": 2},
    "uneven": {"ulysses_degree": 2, "ulysses_anything": True},
}


def methods(threshold: float) -> dict[str, relcache.CacheMethod]:
    """Every method on an 8-step trajectory; RCS at ``threshold`` (NFC 4.5 to 6 here)."""
    return {
        "fora": relcache.FORA(interval=3),
        "taylorseer": relcache.TaylorSeer(interval=3),
        "rfe": relcache.RFC(rcs=False, interval=3),
        "rfc-row": relcache.RFC(threshold=threshold, scope="row"),
        "rfc-sample": relcache.RFC(threshold=threshold, scope="sample"),
        "rfc-batch": relcache.RFC(threshold=threshold, scope="batch"),
        "budget": relcache.RFC(nfc=5, steps=STEPS, scope="row"),
    }


@dataclass(frozen=True)
class Family:
    """A tiny diffusers pipeline: its RCS threshold, sizes (even, uneven tokens), modules."""

    threshold: float
    size: tuple[int, int]  # (image side, frames): 64 / 8 tokens split evenly
    uneven: tuple[int, int]  # 49 + 6 / 27 tokens: shards of 25 and 24 + 3 / 14 and 13
    modules: int  # cached modules of the tiny transformer


FAMILIES = {"flux": Family(0.1, (16, 1), (14, 1), 8), "wan": Family(0.4, (32, 5), (48, 9), 6)}


# ----- test-only shims: diffusers' context parallelism on CPUs --------------------------------
def _cpu_accelerator() -> None:
    """diffusers builds its mesh on ``torch._C._get_accelerator()``: the CPU here."""
    torch.accelerator.device_count = lambda: 1
    torch._C._get_accelerator = lambda: torch.device("cpu")


def _attention_with_lse(original: Callable) -> Callable:
    """diffusers' native CP attention op, returning the log-sum-exp when ring attention asks."""

    def op(*args: Any, **kwargs: Any) -> Any:
        _, query, key, value, attn_mask, dropout_p, is_causal, scale, _, return_lse = args
        if not return_lse:
            return original(*args, **kwargs)
        assert attn_mask is None and not is_causal and dropout_p == 0.0
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, H, S, D)
        logits = q @ k.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)  # (B, H, S, S_kv)
        lse = logits.logsumexp(-1)  # (B, H, S)
        out = (logits - lse[..., None]).exp() @ v  # (B, H, S, D)
        return out.transpose(1, 2), lse.transpose(1, 2)  # (B, S, H, D), (B, S, H)

    return op


def _padded_all_gather(tensor: Tensor, dim: int, group: Any) -> Tensor:
    """diffusers' uneven all_gather through gloo: pad every shard to the longest, trim."""
    from diffusers.models._modeling_parallel import gather_size_by_comm

    sizes = gather_size_by_comm(tensor.shape[dim], group)
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [0, max(sizes) - tensor.shape[dim]]
    padded = torch.nn.functional.pad(tensor, pad).contiguous()  # longest shard along dim
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)], dim=dim)


def _shims() -> None:
    """Install the three test-only shims in this process."""
    from diffusers.hooks import context_parallel
    from diffusers.models import attention_dispatch

    _cpu_accelerator()
    native = attention_dispatch._native_attention_forward_op
    attention_dispatch._native_attention_forward_op = _attention_with_lse(native)
    context_parallel._all_gather_anything = _padded_all_gather


# ----- the ranks' work ------------------------------------------------------------------------
def _generate(family: str, pipe: Any, size: tuple[int, int]) -> list[Tensor]:
    """Every transformer output of one 8-step generation: 2 prompts, CFG as two calls a step."""
    from tests import test_diffusers as td

    if family == "flux":
        call = lambda: td._flux_call(pipe, STEPS, 2, size[0], True)  # noqa: E731
    else:
        call = lambda: pipe(  # noqa: E731
            **td._text(2, pooled=False),
            guidance_scale=5.0,
            height=size[0],
            width=size[0],
            num_frames=size[1],
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )
    with td._recording(pipe) as outs, torch.no_grad():
        call()
    return outs


def _cached_run(run: Callable[[], list[Tensor]], target: Any, method: Any, group: Any) -> dict:
    """Run with ``method`` applied: outputs, schedules, collectives issued (by kind)."""
    relcache.apply(target, method, process_group=group)
    before = parallel.COLLECTIVES.copy()
    try:
        outs = run()
        stats = relcache.stats(target)
    finally:
        relcache.remove(target)
    used = dict(parallel.COLLECTIVES - before)
    return {"outs": outs, "schedules": stats.schedules, "collectives": used, "nfc": stats.nfc}


def _compare(ref: dict, got: dict, rows: slice = slice(None)) -> dict:
    """Largest output difference, schedules, collectives of one case (numbers only)."""
    pairs = zip(got["outs"], ref["outs"], strict=True)
    err = max((g - r[rows]).abs().max().item() for g, r in pairs)
    ref_schedules = {k: v[rows] for k, v in ref["schedules"].items()}
    checksum = sum(o.double().sum().item() for o in got["outs"])
    return {
        "err": err,
        "same_schedules": got["schedules"] == ref_schedules,
        "schedules": got["schedules"],
        "collectives": got["collectives"],
        "calls": len(got["outs"]),
        "nfc": got["nfc"],
        "checksum": checksum,
    }


def _context_parallel_cases() -> dict:
    """FLUX and Wan, every mode and method: CP ranks against one process on the same rank."""
    import diffusers

    from tests import test_diffusers as td

    results = {}
    for family, fam in FAMILIES.items():
        plain = td._pipe(family)
        for mode, degrees in MODES.items():
            size = fam.uneven if mode == "uneven" else fam.size
            pipe = td._pipe(family)
            pipe.transformer.enable_parallelism(config=diffusers.ContextParallelConfig(**degrees))
            check = relcache.Parallel(check=True)  # the model's own group, decisions compared
            for name, method in methods(fam.threshold).items():
                ref = _cached_run(partial(_generate, family, plain, size), plain, method, None)
                got = _cached_run(partial(_generate, family, pipe, size), pipe, method, check)
                results[family, mode, name] = _compare(ref, got)
    return results


def _without_reduction() -> dict:
    """+RFE and RFC under Ulysses with the token sums left per rank: what the tests catch."""
    import diffusers

    from tests import test_diffusers as td

    fam, results = FAMILIES["flux"], {}
    plain, pipe = td._pipe("flux"), td._pipe("flux")
    pipe.transformer.enable_parallelism(config=diffusers.ContextParallelConfig(ulysses_degree=2))
    reduce, parallel.sum_rows = parallel.sum_rows, lambda *partials: partials
    try:
        for name in ("rfe", "rfc-row"):
            method = methods(fam.threshold)[name]
            ref = _cached_run(partial(_generate, "flux", plain, fam.size), plain, method, None)
            check = relcache.Parallel(check=True)
            try:
                got = _cached_run(partial(_generate, "flux", pipe, fam.size), pipe, method, check)
                results[name] = _compare(ref, got)
            except RuntimeError as err:  # the debug check: ranks decided differently
                results[name] = {"raised": str(err)}
    finally:
        parallel.sum_rows = reduce
    return results


def _dit_steps(model: Any, rank: int | None, batch: int = 2) -> list[Tensor]:
    """A guided DiT loop: one doubled-batch call a step (``rank`` None), or this rank's branch
    (0: cond, 1: uncond) with the other's output all-gathered. Returns the model's outputs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=gen)  # (B, C, H, W)
    labels = [torch.arange(batch), torch.full((batch,), 1000)]  # cond, the null class
    outs = []
    with torch.no_grad():
        for t in torch.linspace(999, 0, STEPS).long():
            if rank is None:
                doubled = torch.cat([x, x])  # (2B, C, H, W)
                out = model(doubled, timestep=t.expand(2 * batch), class_labels=torch.cat(labels))
                out = out.sample[:, :4]  # (2B, 4, H, W)
                cond, uncond = out.chunk(2)
            else:
                out = model(x, timestep=t.expand(batch), class_labels=labels[rank]).sample[:, :4]
                cond, uncond = parts = [torch.empty_like(out) for _ in range(WORLD)]
                dist.all_gather(parts, out.contiguous())
            outs.append(out)
            x = x - 0.05 * (uncond + 4.0 * (cond - uncond))
    return outs


def _cfg_cases(rank: int) -> dict:
    """The DiT's CFG branches on the two ranks against one process with the doubled batch."""
    from tests import test_diffusers as td

    model, results = td._pipe("dit").transformer, {}
    rows = slice(2 * rank, 2 * rank + 2)  # this rank's branch in the doubled batch
    group = relcache.Parallel(cfg=dist.group.WORLD)
    for name, method in methods(0.1).items():
        ref = _cached_run(partial(_dit_steps, model, None), model, method, None)
        got = _cached_run(partial(_dit_steps, model, rank), model, method, group)
        results[name] = _compare(ref, got, rows)
    return results


def _check_catches(rank: int) -> str:
    """The debug check, shown rank 0 a full step and rank 1 a cached one: what it raises."""
    from relcache.caching.schedulers import CACHED, FULL

    parallel.enter(None, relcache.Parallel(dist.group.WORLD, check=True))
    try:
        parallel.check_decision(FULL if rank == 0 else CACHED, 3)
    except RuntimeError as err:
        return str(err)
    finally:
        parallel.leave()
    return ""


def _worker(rank: int, port: int, queue: Any) -> None:
    """One rank: every case, numbers back to the parent (or the traceback)."""
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD,
            timeout=datetime.timedelta(seconds=60),
        )
        _shims()
        results = {
            "cp": _context_parallel_cases(),
            "cfg": _cfg_cases(rank),
            "broken": _without_reduction(),
            "check": _check_catches(rank),
        }
        queue.put((rank, results))
    except BaseException:
        queue.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    """Both ranks' results (one spawn for the whole module)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        got = dict(queue.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for rank, res in got.items():
        assert isinstance(res, dict), f"rank {rank} failed:\n{res}"
    return [got[r] for r in range(WORLD)]


# ----- the checks -----------------------------------------------------------------------------
CASES = [(f, m, n) for f in FAMILIES for m in MODES for n in methods(0.1)]


@pytest.mark.parametrize(("family", "mode", "method"), CASES)
def test_context_parallel_equals_one_process(ranks, family: str, mode: str, method: str) -> None:
    for res in ranks:
        case = res["cp"][family, mode, method]
        assert case["same_schedules"], case["schedules"]
        assert case["err"] < TOL, case["err"]
    assert ranks[0]["cp"][family, mode, method] == ranks[1]["cp"][family, mode, method]


@pytest.mark.parametrize("method", list(methods(0.1)))
def test_cfg_branches_on_two_ranks_equal_the_doubled_batch(ranks, method: str) -> None:
    for res in ranks:
        case = res["cfg"][method]
        assert case["same_schedules"], case["schedules"]
        assert case["err"] < TOL, case["err"]
    if method not in ("rfc-row", "budget"):  # a pair decides together: one schedule
        assert ranks[0]["cfg"][method]["schedules"] == ranks[1]["cfg"][method]["schedules"]


def test_the_schedules_are_not_trivial(ranks) -> None:
    """RCS caches some steps and not others, and "row" differs from "sample" on the DiT."""
    for family, mode in [(f, m) for f in FAMILIES for m in MODES]:
        nfc = ranks[0]["cp"][family, mode, "rfc-row"]["nfc"]
        assert 2 < nfc < STEPS, (family, mode, nfc)
    cfg = [res["cfg"] for res in ranks]
    assert any(c["rfc-row"]["schedules"] != c["rfc-sample"]["schedules"] for c in cfg)


def test_collectives_per_step(ranks) -> None:
    """FORA / TaylorSeer: none; +RFE: one per cached module call (its norms and Gram terms in
    one all_reduce); RFC: that, one more per module at a partly full step, and one a decision."""
    for family, fam in FAMILIES.items():
        for mode in MODES:
            cp = ranks[0]["cp"]
            calls = cp[family, mode, "fora"]["calls"]  # root calls: steps x 2 CFG branches
            assert cp[family, mode, "fora"]["collectives"].get("sum", 0) == 0
            assert cp[family, mode, "taylorseer"]["collectives"].get("sum", 0) == 0
            assert cp[family, mode, "rfe"]["collectives"]["sum"] == fam.modules * calls
            for name in ("rfc-row", "rfc-sample", "rfc-batch", "budget"):
                used = cp[family, mode, name]["collectives"]["sum"]
                assert fam.modules * calls < used <= (2 * fam.modules + 1) * calls, (name, used)


def test_without_the_reduction_the_ranks_disagree(ranks) -> None:
    """The checks above can fail: with each rank's own token sums +RFE leaves one process's
    outputs, and RFC's ranks decide differently (the debug check raises) or drift too."""
    for res in ranks:
        assert res["broken"]["rfe"]["err"] > 100 * TOL
        rfc = res["broken"]["rfc-row"]
        assert "different decisions" in rfc.get("raised", "") or rfc["err"] > 100 * TOL


def test_the_debug_check_raises_on_every_rank_when_decisions_differ(ranks) -> None:
    for res in ranks:
        assert "different decisions" in res["check"]
        assert "(3, True, None), (3, False, None)" in res["check"]


# ----- in one process -------------------------------------------------------------------------
def test_without_a_group_nothing_is_reduced_or_counted() -> None:
    x, y = torch.rand(3), torch.rand(3, 2, 2)
    before = parallel.COLLECTIVES.copy()
    parallel.enter(torch.nn.Linear(1, 1), None)
    try:
        assert parallel.active() is None
        assert all(a is b for a, b in zip(parallel.sum_rows(x, y), (x, y), strict=True))
        assert parallel.norm_rows(x)[0] is x and parallel.max_over_cfg(x) is None
    finally:
        parallel.leave()
    assert parallel.COLLECTIVES == before


def test_the_group_comes_from_the_diffusers_config_or_the_argument() -> None:
    class Mesh:
        def get_group(self) -> str:
            return "cp-group"

    model = torch.nn.Linear(1, 1)
    model._parallel_config = type("P", (), {"context_parallel_config": None})()
    assert parallel.resolve(model, None) is None
    model._parallel_config.context_parallel_config = type("C", (), {"_flattened_mesh": Mesh()})()
    assert parallel.resolve(model, None) == relcache.Parallel("cp-group")
    given = relcache.Parallel(cfg="cfg-group", check=True)
    assert parallel.resolve(model, given) == relcache.Parallel("cp-group", "cfg-group", True)
    with pytest.raises(ValueError, match="relcache.compile is not supported"):
        parallel.refuse_compile(model, None)
    with pytest.raises(TypeError, match="process_group must be"):
        relcache.apply(model, relcache.FORA(), patterns=["weight"], process_group="ranks 0-1")
