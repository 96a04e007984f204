"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys) -> None:
    text = README.read_text()
    section = text.split("## Use it on your model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    nfc = float(re.search(r"NFC ([\d.]+) of 50", out).group(1))
    psnr = float(re.search(r"PSNR against full compute: ([\d.]+) dB", out).group(1))
    assert 2 <= nfc < 50 and psnr > 20


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert "relcache demo" in block[0] and "pytest" in block[1]
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = block[1].split("#")[0].strip()
    assert test_command.split(" && ") == [
        c for c in ci.splitlines() if c.startswith(("pip ", "python "))
    ]
