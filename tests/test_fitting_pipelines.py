"""Fitting a schedule through diffusers pipelines: prompts (or class labels) instead of DiT's
classes, the pipeline's own scheduler, scored on its outputs. Tiny offline pipelines: PixArt-Sigma
with a tiny T5 (tests/test_pipelines_e2e.py, prompts) and DiT (tests/test_diffusers.py, labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import relcache
from relcache.caching.methods.profile import weights_hash
from relcache.cli import main
from relcache.evaluation.fitting import SearchPaused, state_path

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from tests import test_diffusers, test_pipelines_e2e  # noqa: E402 (needs diffusers)

PROMPTS = ["a photo of a cat", "a red dog on the grass"]
SIZE = dict(height=16, width=16, use_resolution_binning=False)  # the tiny PixArt's
FIT = dict(steps=6, cfg_scale=4.5, samples=2, radius=1, progress=False)


@pytest.fixture(scope="module")
def pixart(one_thread) -> Any:
    """A fresh tiny PixArt-Sigma (float32), not the e2e tests' shared one."""
    e2e = test_pipelines_e2e
    return e2e._pipe.__wrapped__(e2e.CASES["pixart"].pipeline, torch.float32)


@pytest.fixture(scope="module")
def dit(one_thread) -> Any:
    return test_diffusers._pipe("dit")


@pytest.fixture(scope="module")
def fitted(pixart, tmp_path_factory) -> tuple[relcache.Profile, Path]:
    out = tmp_path_factory.mktemp("fit") / "pixart.json"
    profile = relcache.fit_schedule(pixart, 4, **FIT, prompts=PROMPTS, pipeline_kwargs=SIZE,
                                    out=out)  # fmt: skip
    return profile, out


def _full_steps(pipe: Any, config: relcache.CacheMethod, **call: Any) -> dict:
    """The full steps per branch of one cached generation."""
    with relcache.cached(pipe, config):
        pipe(num_inference_steps=FIT["steps"], output_type="latent", **call)
        return relcache.stats(pipe).full_steps


def test_a_pipeline_fit_gives_a_profile_that_runs_its_steps(fitted, pixart, dit) -> None:
    profile, out = fitted
    assert len(profile.full_steps) == 4 and profile.score["after"] >= profile.score["before"]
    assert profile.sampler == "PixArtSigmaPipeline (DPMSolverMultistepScheduler)"
    assert profile.model_hash == weights_hash(pixart.transformer) == weights_hash(pixart)
    assert profile.search["calibration_inputs"]["prompts"] == PROMPTS
    assert profile.search["stopped"] == "converged" and not state_path(out).exists()
    config = relcache.from_profile(out, model=pixart)
    ran = _full_steps(pixart, config, prompt=PROMPTS[0], **SIZE)
    assert ran == {"call0": list(profile.full_steps)}
    with pytest.raises(ValueError, match="fit a profile for it"):
        relcache.from_profile(out, model=dit)


def test_a_paused_pipeline_fit_resumes_to_the_uninterrupted_result(fitted, pixart, tmp_path):
    whole, _ = fitted
    out, kw = tmp_path / "fit.json", dict(FIT, prompts=PROMPTS, pipeline_kwargs=SIZE)
    with pytest.raises(SearchPaused, match="resume"):
        relcache.fit_schedule(pixart, 4, **kw, out=out, max_seconds=0.0)
    with pytest.raises(ValueError, match="prompts differ"):
        relcache.fit_schedule(pixart, 4, **{**kw, "prompts": PROMPTS[:1]}, out=out, resume=True)
    resumed = relcache.fit_schedule(pixart, 4, **kw, out=out, resume=True)
    assert resumed.full_steps == whole.full_steps and resumed.score == whole.score
    assert resumed.search["generations"] == whole.search["generations"]


@pytest.mark.parametrize(
    ("target", "given", "message"),
    [
        ("pixart", {}, r"needs calibration prompts: pass prompts=\['a photo"),
        ("pixart", dict(class_labels=[1]), "needs calibration prompts"),
        ("pixart", dict(prompts=[""]), "non-empty strings"),
        ("pixart", dict(prompts=[]), "prompts is empty"),
        ("dit", dict(prompts=PROMPTS), "class-conditional: pass class_labels="),
        ("dit", dict(class_labels=[-1]), "class ids"),
        ("pixart", dict(prompts=PROMPTS, pipeline_kwargs={"generator": 1}), "set by the fit"),
        ("pixart", dict(prompts=PROMPTS, pipeline_kwargs={"x": torch.ones(1)}), "JSON values"),
        ("model", dict(prompts=PROMPTS), "are for diffusers pipelines"),
    ],
)
def test_pipeline_inputs_are_checked_first(target, given, message, pixart, dit) -> None:
    model = {"pixart": pixart, "dit": dit, "model": dit.transformer}[target]
    with pytest.raises(ValueError, match=message):
        relcache.fit_schedule(model, 4, **FIT, **given)


def test_a_class_conditional_pipeline_fits_on_class_labels(dit, pixart, tmp_path) -> None:
    out = tmp_path / "dit.json"
    profile = relcache.fit_schedule(dit, 4, **FIT, class_labels=[1, 3], max_generations=3,
                                    out=out)  # fmt: skip
    assert profile.sampler == "DiTPipeline (DDIMScheduler)" and len(profile.full_steps) == 4
    assert profile.search["generations"] == 3 and profile.search["stopped"] == "cap"
    config = relcache.from_profile(out, model=dit)
    assert _full_steps(dit, config, class_labels=[2]) == {"call0": list(profile.full_steps)}
    with pytest.raises(ValueError, match="fit a profile for it"):
        relcache.from_profile(out, model=pixart)


def test_a_scheduler_with_two_calls_per_step_is_refused(one_thread) -> None:
    pipe = test_diffusers._pipe("dit")
    heun = pytest.importorskip("diffusers").HeunDiscreteScheduler
    pipe.scheduler = heun.from_config(pipe.scheduler.config)  # 2 calls per step but the last
    with pytest.raises(ValueError, match=r"ran \[11\] steps .* once per step"):
        relcache.fit_schedule(pipe, 4, **FIT, class_labels=[1])


def test_calibrate_command_fits_a_saved_pipeline(pixart, tmp_path, capsys) -> None:
    folder, prompts, out = tmp_path / "pipe", tmp_path / "prompts.txt", tmp_path / "p.json"
    pixart.save_pretrained(folder)
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    args = ["calibrate", "--pipeline", str(folder), "--steps", "6", "--nfc", "4", "--samples",
            "2", "--max-generations", "2", "--out", str(out), "--no-progress", "--device", "cpu",
            "--pipeline-kwargs", json.dumps(SIZE)]  # fmt: skip
    assert main([*args, "--prompts-file", str(prompts)]) == 0
    assert "NFC 4: full steps" in capsys.readouterr().out
    profile = relcache.load_profile(out)
    assert profile.matches(pixart) and profile.search["calibration_inputs"]["prompts"] == PROMPTS
    assert main(args) == 2 and "--prompts-file" in capsys.readouterr().err
    assert main(["calibrate", "--nfc", "4", "--prompts-file", str(prompts), "--out", str(out)]) == 2
    assert "is for --pipeline FOLDER" in capsys.readouterr().err
