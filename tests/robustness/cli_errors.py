"""The command line in-process, and what a clear error is: exit 2 and one ``error: ...`` line, the last on stderr."""

from __future__ import annotations

from lowrank.cli.main import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clear_error(code: int, err: str, *needles: str) -> str:
    """Exit 2 and one ``error: ...`` line, the last on stderr (progress bars may come before it), with no
    traceback and every needle in it; returns the line."""
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
