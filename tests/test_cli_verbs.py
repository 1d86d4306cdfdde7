import pytest

from xwam.cli import COMMAND_MODULES, build_parser, main

VERBS = ["collect", "dataset", "train", "eval", "imagine", "eval-4d", "diagnose", "serve", "bench", "convert", "demo", "presets"]


def test_help_lists_every_verb(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out, verb


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_explains_itself(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_every_listed_module_exists():
    import importlib.util

    assert all(importlib.util.find_spec(name) is not None for name in COMMAND_MODULES)
    assert build_parser().prog == "xwam"


def test_presets_verb(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "wan22-ti2v-5b" in out and "tokens=761" in out


@pytest.mark.parametrize("verb", ["eval", "imagine", "eval-4d", "diagnose"])
def test_threads_option_sets_torch_threads_before_the_verb_runs(verb, monkeypatch, tmp_path, capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    missing = str(tmp_path / "no-checkpoint")
    extra = {"eval": ["--task", "Lift"], "imagine": ["--task", "Lift"], "eval-4d": ["--data", missing],
             "diagnose": ["--data", missing]}[verb]
    assert main([verb, "--threads", "1", "--checkpoint", missing, *extra]) == 2  # no checkpoint: a clear error
    assert calls == [1]
    assert "error" in capsys.readouterr().err
