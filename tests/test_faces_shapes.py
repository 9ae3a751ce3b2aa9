"""The faces' plumbing: a command is one registration, and both faces share one shape."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from jobkit import cli, shapes
from jobkit.cli import registry


def test_a_command_is_one_registration(capsys: pytest.CaptureFixture[str]) -> None:
    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--times", type=int, default=1, help="how many times")

    @registry.command("hello", "say hello", arguments, db=False)
    async def cmd_hello(args: argparse.Namespace) -> int:
        print("hello " * args.times + ("(json)" if args.json else ""))
        return 0

    try:
        helps = cli.build_parser().format_help()
        assert "say hello" in helps
        args = cli.build_parser().parse_args(["hello", "--times", "2", "--json"])
        assert asyncio.run(args.func(args)) == 0  # what cli.main runs (without its logging)
        assert capsys.readouterr().out == "hello hello (json)\n"
        with pytest.raises(ValueError, match="registered twice"):
            registry.command("hello", "again")(cmd_hello)
    finally:
        del registry.COMMANDS["hello"]
    assert "say hello" not in cli.build_parser().format_help()


def test_the_commands_are_listed_in_their_documented_order() -> None:
    assert list(registry.COMMANDS) == [
        "init", "migrate", "upload", "enqueue", "step", "work", "drain", "status", "jobs",
        "schedules", "show", "explain", "failed", "retry", "cancel", "prune", "serve", "demo"]


def test_http_upload_is_the_cli_upload_less_the_server_paths() -> None:
    from types import SimpleNamespace

    from jobkit.api.models import UploadOut

    asset = SimpleNamespace(id="a", filename="m.mp4", duration_ms=1000, stored_path="/srv/m.mp4",
                            size_bytes=2, width=None, height=None, fps=None)
    job = SimpleNamespace(id="j", job_type="cut_analysis", status="pending")
    cli_shape = shapes.upload_dict(asset, job)  # type: ignore[arg-type]
    http_only = set(UploadOut.model_fields) - set(cli_shape)
    assert http_only == {"stored"}
    assert set(cli_shape) - set(UploadOut.model_fields) == {"stored_path", "width", "height",
                                                             "fps"}
