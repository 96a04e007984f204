"""The bench report's peers section: tables per budget at matched measured FLOPs, the peers'
defaults, how each was configured and searched (its space and winner per budget), the ones that
could not run (with the error), the plot, and a plain verdict."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from relcache.evaluation import plots
from relcache.evaluation.budgets import WARMUP
from relcache.evaluation.rows import finite
from relcache.evaluation.settings import BenchSettings
from relcache.evaluation.tables import format_markdown

PEER_COLUMNS = (
    "label", "gflops", "flops_speedup", "ms_per_image", "wall_speedup", "psnr", "ssim", "fd2fc",
    "class_accuracy", "peak_cache_mb",
)  # fmt: skip
PEER_FORMATS = {"gflops": "{:.3f}", "ms_per_image": "{:.1f}", "peak_cache_mb": "{:.2f}"}


def peer_rows(results: dict, budget: int | None) -> list[dict]:
    """Peer rows that ran at ``budget`` (None: their defaults)."""
    peers = (results.get("peers") or {}).values()
    return [r for r in peers if r["budget"] == budget and "error" not in r]


def our_rows(results: dict, s: BenchSettings, budget: int) -> list[dict]:
    """relcache's rows at ``budget`` that have measured FLOPs."""
    runs = results["runs"]
    rows = [runs.get(f"{m}@{budget}") for m in s.methods]
    return [r for r in rows if r is not None and r.get("gflops") is not None]


def write_peers_plot(results: dict, s: BenchSettings, path: Path) -> Path | None:
    """FD2FC and PSNR against measured GFLOPs: relcache's methods and every peer."""
    if not results.get("peers"):
        return None
    rows = [results["runs"]["full"]] if results["runs"]["full"].get("gflops") else []
    for budget in s.budgets:
        rows += our_rows(results, s, budget) + peer_rows(results, budget)
    rows += [{**r, "method": r["method"] + "-defaults"} for r in peer_rows(results, None)]
    return plots.plot_quality_vs_flops(rows, path, x="gflops", xlabel="GFLOPs per image (counted)")


def peers_section(results: dict, s: BenchSettings) -> list[str]:
    """The report's "Peers" section (empty without peers)."""
    peers = results.get("peers") or {}
    if not peers:
        return []
    match = s.match_method
    lines = [
        "## Peers: other caching libraries on the same model",
        "",
        "Every row here ran on the shipped model converted exactly to diffusers' "
        "`DiTTransformer2DModel`, with the same DDIM sampler, seeds, CFG and batches. GFLOPs per "
        "image are counted by `torch.utils.flop_counter.FlopCounterMode` on each run's first "
        "batch, relcache's rows included (block-level caches pay for the blocks they always "
        "run); that batch is left out of ms/image (the counter slows a step). At each point of "
        "a peer's search space (its documented secondary knobs), its knob was tuned on the "
        f"calibration seeds to the GFLOPs `{match}` measured at that budget; the point with the "
        "best calibration PSNR among those that meet the budget won (below: each peer's space "
        "and winners). The rows below are on the held-out seeds.",
        "",
    ]
    for budget in s.budgets:
        rows = our_rows(results, s, budget) + peer_rows(results, budget)
        if rows:
            lines += [f"### NFC {budget} of {s.steps}", "",
                      format_rows(rows), "", *verdict(results, s, budget), "",
                      *trade_off(results, s, budget)]  # fmt: skip
    defaults = peer_rows(results, None)
    if defaults:
        lines += ["### Peers at their documented defaults", "", format_rows(defaults), ""]
    lines += ["### How each peer was configured and searched", ""]
    for peer in _benched(s):
        lines += search_lines(results, peer, s)
    failed = [r for r in peers.values() if "error" in r]
    if failed:
        lines += ["### Could not run", ""]
        lines += [f"- {r['family']} @ {r['budget'] or 'defaults'}: `{r['error']}`" for r in failed]
        lines.append("")
    lines += ["![quality vs GFLOPs with the peers](quality_vs_gflops_peers.png)", ""]
    return lines


SEARCH_COLUMNS = (
    "budget", "winner", "calibration_gflops", "target_gflops", "calibration_psnr", "meet_budget",
)  # fmt: skip
SEARCH_FORMATS = {"calibration_gflops": "{:.3f}", "target_gflops": "{:.3f}",
                  "calibration_psnr": "{:.2f}"}  # fmt: skip


def search_lines(results: dict, peer: Any, s: BenchSettings) -> list[str]:
    """One peer's note, search space and winner per budget (a table, once it has searched)."""
    rows = [r for r in _tuned_rows(results, peer.name) if r.get("search")]
    space = rows[0]["search"]["space"] if rows else peer.search_space(s.steps, WARMUP)
    knob = peer.knob.name if peer.knob else "-"
    points = math.prod(len(v) for v in space.values())
    axes = " x ".join(f"`{k}` in {{{', '.join(map(_value, v))}}}" for k, v in space.items())
    searched = (f"`{knob}` tuned to the target at each of the {points} points of {axes}"
                if axes else f"`{knob}` alone, tuned to the target")  # fmt: skip
    lines = [f"#### {peer.label} (`{peer.name}`)", "", peer.note + ".", "",
             f"Search space: {searched}.", ""]  # fmt: skip
    if rows:
        table = format_markdown([search_row(r) for r in rows], SEARCH_COLUMNS, SEARCH_FORMATS)
        lines += [table, ""]
    return lines


def search_row(row: dict) -> dict:
    """A budget's winner from a peer row's search record."""
    search = row["search"]
    candidates = search["candidates"]
    winner = candidates[search["winner"]]
    meets = sum(bool(c["meets"]) for c in candidates)
    return {
        "budget": row["budget"],
        "winner": ", ".join(f"{k}={_value(v)}" for k, v in winner["knobs"].items()),
        "calibration_gflops": winner["gflops"],
        "target_gflops": search["target_gflops"],
        "calibration_psnr": winner["psnr"],
        "meet_budget": f"{meets} of {len(candidates)}",
    }


def _tuned_rows(results: dict, name: str) -> list[dict]:
    """``name``'s rows at a budget that ran, the largest budget first."""
    rows = [r for r in (results.get("peers") or {}).values() if r.get("peer") == name]
    return sorted((r for r in rows if r["budget"] is not None and "error" not in r),
                  key=lambda r: -r["budget"])  # fmt: skip


def _value(value: Any) -> str:
    """A knob value, short: floats to 4 digits, sequences in parentheses."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(map(_value, value)) + ")"
    return str(value)


def _benched(s: BenchSettings) -> list:
    from relcache.peers import get_peer

    return [get_peer(name) for name in s.peers]


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of the peer columns."""
    return format_markdown(rows, PEER_COLUMNS, PEER_FORMATS)


def verdict(results: dict, s: BenchSettings, budget: int) -> list[str]:
    """For each relcache row at this budget: where it is ahead of every peer, where not."""
    peers = peer_rows(results, budget)
    if not peers:
        return []
    fastest = min(peers, key=lambda r: r["ms_per_image"])
    return [_verdict_line(ours, peers, fastest) for ours in our_rows(results, s, budget)]


TRADE_OFF = ("label", "psnr", "fd2fc", "ms_per_image", "peak_cache_mb", "unbeaten")


def beaten_by(ours: dict, peer: dict) -> bool:
    """Whether ``peer`` is at least as good as ``ours`` on quality (PSNR and FD2FC), speed
    (ms/image) and memory (cache MiB) all at once."""
    return (
        peer["psnr"] >= ours["psnr"]
        and peer["fd2fc"] <= ours["fd2fc"]
        and peer["ms_per_image"] <= ours["ms_per_image"]
        and peer["peak_cache_mb"] <= ours["peak_cache_mb"]
    )


def trade_off(results: dict, s: BenchSettings, budget: int) -> list[str]:
    """Quality against ms/image and cache MiB at this budget; "yes" where no peer is at least
    as good on all three (issue 20's trade-off table)."""
    peers = [r for r in peer_rows(results, budget) if finite(r.get("psnr"))]
    ours = our_rows(results, s, budget)
    if not peers or not ours:
        return []
    rows = [{**r, "unbeaten": "yes" if not any(beaten_by(r, p) for p in peers) else ""}
            for r in ours] + [{**p, "unbeaten": "(peer)"} for p in peers]  # fmt: skip
    rows.sort(key=lambda r: r["ms_per_image"])
    formats = {"ms_per_image": "{:.1f}", "peak_cache_mb": "{:.1f}"}
    return [
        f"Trade-off at NFC {budget}, fastest first; **unbeaten**: no peer is at least as good on "
        "PSNR, FD2FC, ms/image and cache MiB at once.",
        "",
        format_markdown(rows, TRADE_OFF, formats),
        "",
    ]


def _verdict_line(ours: dict, peers: list[dict], fastest: dict) -> str:
    parts = []
    for key, name, better in (("fd2fc", "FD2FC", min), ("psnr", "PSNR", max)):
        rivals = [r for r in peers if finite(r.get(key)) and better(r[key], ours[key]) != ours[key]]
        if not rivals:
            parts.append(f"ahead of every peer on {name} ({ours[key]:.3f})")
        else:
            names = ", ".join(f"{r['family']} {r[key]:.3f} at {r['gflops']:.2f} GFLOPs"
                              for r in rivals)  # fmt: skip
            parts.append(f"behind on {name} ({ours[key]:.3f}) to {names}")
    speed = "faster than" if ours["ms_per_image"] <= fastest["ms_per_image"] else "slower than"
    parts.append(
        f"{ours['ms_per_image']:.1f} ms/image, {speed} the fastest peer ({fastest['family']}, "
        f"{fastest['ms_per_image']:.1f} ms/image at {fastest['gflops']:.2f} GFLOPs)"
    )
    return f"- **{ours['label']}** ({ours['gflops']:.2f} GFLOPs): " + "; ".join(parts) + "."
