"""Running the `wsss` command line from a test: in a new process, or in this one."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

from wsss.cli import main


def wsss_process(
    *args: str, cwd: Path | None = None, env=None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m wsss ARGS`` in a new process: the real entry point, exit status and streams."""
    return subprocess.run(
        [sys.executable, "-m", "wsss", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def wsss_in_process(*args: str) -> subprocess.CompletedProcess:
    """``wsss ARGS`` through the same entry point, :func:`wsss.cli.main` (argument parsing, the
    stage, the exit status, the one-line error on stderr), run in this process.

    A new interpreter spends 5-10 s of a busy 2-core machine importing torch and timm before any
    work; tests of the entry point itself (a real exit status, a kill) use :func:`wsss_process`,
    commands that only need the command line's behaviour use this. Output goes through
    ``sys.stdout``/``sys.stderr`` (typer, rich, tqdm), which are captured here.
    """
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    argv, sys.argv = sys.argv, ["wsss", *args]  # main() reads its arguments from sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
    code = 0 if code is None else code if isinstance(code, int) else 1
    return subprocess.CompletedProcess(["wsss", *args], code, out.getvalue(), err.getvalue())
