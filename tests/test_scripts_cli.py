"""Every script's command line: `--help` documents every option, and bad paths stop it up front, naming the path."""

import argparse
import runpy
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(  # every file of these folders that runs as a script (evaluation/metrics_hydrax.py is a module)
    str(path.relative_to(ROOT))
    for folder in ("examples", "conversion", "bench", "evaluation")
    for path in (ROOT / folder).glob("*.py")
    if '__name__ == "__main__"' in path.read_text()
)


def run_in_process(script, args, monkeypatch) -> tuple[int, list[argparse.ArgumentParser]]:
    """Run `script` as `__main__` with `args` until argparse exits; its exit code and the parsers it used."""
    parsers, parse_args = [], argparse.ArgumentParser.parse_args

    def recording_parse_args(parser, *rest, **kwargs):
        parsers.append(parser)
        return parse_args(parser, *rest, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", recording_parse_args)
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *map(str, args)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put their folders on it
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    return exit_info.value.code, parsers


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_option(script, monkeypatch, capsys):
    code, parsers = run_in_process(script, ["--help"], monkeypatch)
    assert code == 0 and len(parsers) == 1
    help_text = capsys.readouterr().out
    listed = [action for action in parsers[0]._actions if action.help is not argparse.SUPPRESS]
    undocumented = [action.option_strings for action in listed if not (action.help or "").strip()]
    assert not undocumented, f"{script}: options without help text: {undocumented}"
    for action in listed:
        assert action.option_strings[-1] in help_text, (script, action.option_strings)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")
    return path


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "examples/run_hydrax.py",
            ["--tokenizer", "{missing}"],
            "--tokenizer {missing}: no such folder; pass a folder written by examples/quickstart.py or a Hydra-XTok "
            "checkpoint",
        ),
        ("examples/run_hydrax.py", ["--model", "{tmp}"], "--model {tmp}: a folder without config.json; pass a"),
        ("examples/run_hydrax.py", ["--output-dir", "{file}/out"], "--output-dir {file}/out: {file} is a file"),
        ("examples/quickstart.py", ["--model", "{missing}"], "--model {missing}: no such folder; pass a folder"),
        ("examples/quickstart.py", ["--model", "{file}"], "--model {file}: not a folder; pass a folder"),
        ("examples/quickstart.py", ["--output-dir", "{file}"], "--output-dir {file}: {file} is a file, not a folder"),
        (
            "conversion/build_hydrax.py",
            ["--preset", "hydrax-7b", "--random-init", "--output", "{tmp}/out", "--tokenizer", "{missing}"],
            "--tokenizer {missing}: no such folder; pass a local Qwen2.5 tokenizer folder",
        ),
        (
            "conversion/build_hydrax.py",
            ["--preset", "tiny", "--random-init", "--output", "{file}/out"],
            "--output {file}/out: {file} is a file, not a folder",
        ),
    ],
)
def test_bad_paths_stop_the_script_up_front(script, args, message, monkeypatch, capsys, tmp_path, a_file):
    paths = {"missing": tmp_path / "no" / "such" / "folder", "tmp": tmp_path, "file": a_file}
    code, _ = run_in_process(script, [arg.format(**paths) for arg in args], monkeypatch)
    assert code == 2
    assert message.format(**paths) in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"], "the script did work before the check"
