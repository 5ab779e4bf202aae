"""Run the listserv CLI in-process (click's CliRunner) against a test's database."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from listserv.cli import cli


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int | None = 0, input: str | None = None,
                 env: dict[str, str] | None = None) -> Result:
        result = self.runner.invoke(cli, list(args), env={**self.env, **(env or {})},
                                    input=input, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, (
                f"listserv {' '.join(args)} exited {result.exit_code}, expected {code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def error(self, *args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
        """Run a refused command: exactly one line on stderr, no traceback; return that line."""
        result = self(*args, code=code, env=env)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one error line, got: {result.stderr!r}"
        assert "Traceback" not in result.output
        return lines[0]
