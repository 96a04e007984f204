"""The evaluation harness behind ``relcache demo`` and ``relcache bench``, one concern per file.

- ``runner.py``: one method over a sample set (noise per seed, CFG sampling, time, NFC, memory).
- ``distributed.py``: the same run sharded over torchrun ranks; facts gathered from every rank.
- ``budgets.py``: (method name, NFC budget) -> config: intervals, RCS threshold calibration.
- ``reference.py``: the full-compute reference, cached on disk.
- ``metrics.py``: PSNR, SSIM, classifier features, Frechet distance, class accuracy.
- ``quality.py``: one run's quality against the reference and the test set.
- ``flops.py``: a generation's FLOPs with a method, counted on the meta device.
- ``rows.py``: one result row per run (NFC, TFLOPs, time, memory, quality), for demo and bench.
- ``analysis.py``: the paper's Fig. 1 measurements (prediction error, feature dynamics).
- ``plots.py``: figures and image grids.
- ``hot_path.py``: kernel launches and host syncs per step (the hot-path measures).
- ``tables.py``: text/Markdown tables of result rows.
- ``report.py``: the bench report from results and settings alone.
- ``settings.py``: the bench's validated settings.
- ``bench.py``: the bench's orchestration (runs, resume, results.json).
- ``demo.py``: the demo, a small preset of the bench.
- ``fitting.py``: fit a schedule on calibration images (``relcache calibrate``).
"""
