"""``atomwatch … | head -2``: output to a closed pipe ends every subcommand quietly (exit status
141, nothing on stderr), handled once at the command line's entry; a broken pipe that is not
stdout is still the subcommand's own error. Real processes, real pipes into ``head``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomwatch.cli import CLOSED_PIPE_STATUS
from atomwatch.traces import write_trace

PLUGIN = """
import atomwatch

class Every:
    name = "every-row"
    def update(self, row):
        return [atomwatch.Anomaly("every-row", row.scope, row.index, row.ts, 2.0, 1.0,
                                  [atomwatch.Blame(row.columns[0], "up", 3.0)])]

class Factory:
    name = "every-row"
    description = "flags every row"
    def create(self, scope, options):
        return Every()

@atomwatch.hookimpl
def register_detectors():
    return [Factory()]

def _arguments(parser):
    parser.add_argument("--broken-socket", action="store_true")

def _spew(args, context):
    if args.broken_socket:
        raise BrokenPipeError(32, "a socket of the subcommand broke")
    for i in range(200_000):
        print("line", i)
    return 0

@atomwatch.hookimpl
def register_commands():
    return [atomwatch.Subcommand("spew", "print 200,000 lines", _arguments, _spew)]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pipe")
    plugins = folder / "plugins"
    plugins.mkdir()
    (plugins / "pipe_plugin.py").write_text(PLUGIN)
    trace = folder / "trace.csv"
    rng = np.random.default_rng(0)
    write_trace(trace, [f"vm{j}/m0" for j in range(3)], rng.standard_normal((4000, 3)))
    return plugins, trace


def into_head(args: list[str], plugins: Path, head_args: tuple[str, ...] = ("-2",)) -> tuple[int, str, bytes]:
    """Run ``atomwatch ARGS | head -2``: (atomwatch's exit status, its stderr, what head printed)."""
    head = shutil.which("head")
    assert head, "head is not installed"
    env = dict(os.environ, ATOMWATCH_PLUGINS_DIR=str(plugins))
    writer = subprocess.Popen(
        [sys.executable, "-m", "atomwatch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    reader = subprocess.Popen([head, *head_args], stdin=writer.stdout, stdout=subprocess.PIPE)
    writer.stdout.close()  # head holds the only read end: when it exits, the pipe is closed
    shown, _ = reader.communicate(timeout=300)
    stderr = writer.stderr.read().decode()
    writer.stderr.close()
    return writer.wait(timeout=300), stderr, shown


@pytest.mark.parametrize(
    "args, head_args",
    [
        (["detect", "{trace}", "--detector", "every-row"], ("-2",)),
        (["detect", "{trace}", "--detector", "every-row", "--json"], ("-c", "100")),  # one long line
        (["spew"], ("-2",)),
    ],
    ids=["detect", "detect-json", "plugin-subcommand"],
)
def test_output_to_a_closed_pipe_ends_quietly(setup, args, head_args):
    plugins, trace = setup
    status, stderr, shown = into_head([a.format(trace=trace) for a in args], plugins, head_args)
    assert stderr == "", stderr
    assert status == CLOSED_PIPE_STATUS == 141
    assert shown and (len(shown) == 100 if head_args[0] == "-c" else len(shown.splitlines()) == 2)


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(setup):
    plugins, _ = setup
    status, stderr, _ = into_head(["spew", "--broken-socket"], plugins)
    assert status == 1
    assert "BrokenPipeError" in stderr and "a socket of the subcommand broke" in stderr


def test_whole_output_into_a_pipe_that_stays_open_is_unchanged(setup):
    plugins, trace = setup
    env = dict(os.environ, ATOMWATCH_PLUGINS_DIR=str(plugins))
    p = subprocess.run(
        [sys.executable, "-m", "atomwatch", "detect", str(trace), "--detector", "every-row"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].endswith("4000 rows, 4000 flagged") and len(p.stdout.splitlines()) == 4002
