"""Checkpoints you can trust: determinism at any thread count, crash-safe publication, damaged
checkpoints caught and skipped, leftovers cleaned, explicit schedule semantics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_testutils import losses, tiny_train_config

from xwam.cli import main
from xwam.train import latest_checkpoint, train

STEPS = 6


def weights(ckpt: Path) -> dict:
    return load_file(str(ckpt / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: 6 steps, a checkpoint every 2, EMA on."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return train(tiny_train_config(synthetic_dataset, out, steps=STEPS, save_every=2, ema_decay=0.9))


def test_two_runs_at_two_threads_give_identical_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    runs = [train(tiny_train_config(synthetic_dataset, tmp_path / f"r{i}", steps=STEPS, save_every=STEPS, threads=2))
            for i in range(2)]
    assert_same_weights(*runs)


# A zygote process imports xwam once, then for each request forks a child that runs `xwam train` and
# SIGKILLs itself at the K-th file-system step (rename, exchange, symlink, unlink, folder removal) of
# the save of step SAVE_STEP: the crash a power cut or an OOM kill causes there. Forking spares each
# kill the 5 s import of torch and diffusers; the child is a real process killed by a real signal
# (nothing has run a parallel region before the fork, so the single-threaded child is safe).
ZYGOTE = textwrap.dedent(
    """
    import json, os, shutil, signal, sys
    import xwam.atomic as atomic
    import xwam.train.checkpoints as checkpoints
    import xwam.train.trainer as trainer
    from xwam.cli import main

    state = {"active": False, "calls": 0, "kill_at": 0, "save_step": 0}

    def counted(fn):
        def wrapper(*a, **k):
            if state["active"]:
                state["calls"] += 1
                if state["calls"] == state["kill_at"]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return wrapper

    for module, name in [(os, "replace"), (os, "rename"), (os, "symlink"), (os, "unlink"), (shutil, "rmtree"),
                         (atomic, "exchange_paths")]:
        setattr(module, name, counted(getattr(module, name)))
    real_write = checkpoints.write_step_checkpoint

    def write(target, **kwargs):
        state["active"] = kwargs["trainer_state"]["step"] == state["save_step"]
        try:
            return real_write(target, **kwargs)
        finally:
            state["active"] = False
            print(f"FS_STEPS {state['calls']}", flush=True)

    checkpoints.write_step_checkpoint = trainer.write_step_checkpoint = write
    for line in sys.stdin:
        state["kill_at"], state["save_step"], args = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                code = main(args)
            except BaseException as err:  # report, never return into the request loop
                print(f"ERROR {err!r}", file=sys.stderr, flush=True)
                code = 1
            sys.stdout.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        print(f"DONE {int(killed)} {os.waitstatus_to_exitcode(status)}", flush=True)
    """
)


class Zygote:
    """The zygote above, driven one request at a time."""

    def __init__(self, folder: Path) -> None:
        (folder / "zygote.py").write_text(ZYGOTE)
        self.stderr = folder / "zygote.stderr"
        self._stderr_file = self.stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(folder / "zygote.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr_file, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def run(self, kill_at: int, save_step: int, args: list[str]) -> tuple[bool, int]:
        """(killed, file-system steps the save took when not killed)."""
        self.proc.stdin.write(json.dumps([kill_at, save_step, args]) + "\n")
        self.proc.stdin.flush()
        fs_steps = [0]
        for line in self.proc.stdout:
            if line.startswith("FS_STEPS"):
                fs_steps.append(int(line.split()[1]))
            elif line.startswith("DONE"):
                _, killed, code = line.split()
                assert killed == "1" or code == "0", self.stderr.read_text()[-3000:]
                return killed == "1", max(fs_steps)
        raise AssertionError(f"the zygote died: {self.stderr.read_text()[-3000:]}")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        finally:
            self.proc.kill()
            self.proc.stdout.close()
            self._stderr_file.close()


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "2", "--save-every", "2", "--ema-decay", "0.9", "--threads", "1", "--seed", "3",
            "--no-progress", "--no-tensorboard", "--no-val-images", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["new step", "re-saved step"])
def test_a_kill_at_any_step_of_a_save_resumes_to_the_uninterrupted_result(
    synthetic_dataset: Path, reference: Path, tmp_path: Path, scenario: str
) -> None:
    zygote = Zygote(tmp_path)
    if scenario == "re-saved step":  # one finished run, copied for every kill
        finished = tmp_path / "finished" / "run"
        assert main(_train_args(synthetic_dataset, finished)) == 0
    kill_at = 1
    try:
        while True:
            out = tmp_path / f"kill-{kill_at}" / "run"
            if scenario == "new step":  # killed while saving step 4 for the first time
                killed, fs_steps = zygote.run(kill_at, 4, _train_args(synthetic_dataset, out))
            else:  # a run resumed from step 4 re-saves step 6, which `latest` points to, and is killed there
                shutil.copytree(finished, out, symlinks=True)
                killed, fs_steps = zygote.run(
                    kill_at, 6, _train_args(synthetic_dataset, out, "--resume", str(out / "checkpoints" / "step-00000004")))
            if not killed:
                assert fs_steps >= 2 and kill_at > fs_steps  # every step of the save was tried
                break
            assert latest_checkpoint(out) is not None
            assert main(_train_args(synthetic_dataset, out, "--resume")) == 0
            final = out / "checkpoints" / f"step-{STEPS:08d}"
            assert latest_checkpoint(out) == final.resolve()
            assert_same_weights(final, reference)
            assert_same_weights(final / "ema", reference / "ema")
            litter = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
            assert not litter, litter
            kill_at += 1
    finally:
        zygote.close()


def _damage_step_6(run: Path, kind: str) -> None:
    ckpt = run / "checkpoints" / "step-00000006"
    if kind == "truncated weights":
        (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:64])
    elif kind == "empty weights":
        (ckpt / "model.safetensors").write_bytes(b"")
    elif kind == "flipped bytes":
        data = bytearray((ckpt / "model.safetensors").read_bytes())
        for i in (-3, -30, -300, -3000):
            data[i] ^= 0x55
        (ckpt / "model.safetensors").write_bytes(bytes(data))
    elif kind == "invalid config":
        (ckpt / "config.json").write_text("{ not json")
    elif kind == "hand-edited config":
        (ckpt / "config.json").write_text((ckpt / "config.json").read_text().replace('"video_steps": 8', '"video_steps": 9'))
    elif kind == "truncated trainer state":
        (ckpt / "trainer_state.pt").write_bytes((ckpt / "trainer_state.pt").read_bytes()[:200])
    elif kind == "missing trainer state":
        (ckpt / "trainer_state.pt").unlink()
    elif kind == "missing weights":
        (ckpt / "model.safetensors").unlink()
    elif kind == "latest target gone":
        shutil.rmtree(ckpt)
    else:
        raise AssertionError(kind)


DAMAGE_KINDS = ["truncated weights", "empty weights", "flipped bytes", "invalid config", "hand-edited config",
                "truncated trainer state", "missing trainer state", "missing weights", "latest target gone"]


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_resume_skips_a_damaged_latest_checkpoint_and_says_so(
    synthetic_dataset: Path, reference: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference.parent.parent, out, symlinks=True)  # the reference run's folder, then damaged
    _damage_step_6(out, kind)
    capsys.readouterr()
    final = train(tiny_train_config(synthetic_dataset, out, steps=STEPS, save_every=2, ema_decay=0.9, resume="latest"))
    err = capsys.readouterr().err
    if kind != "latest target gone":  # a vanished folder is not damage to report: `latest` falls back silently
        assert f"checkpoint {(out / 'checkpoints' / 'step-00000006').resolve()} is damaged" in err, err
    assert final.name == "step-00000006"
    assert_same_weights(final, reference)  # re-trained from step 4 to the same weights


def test_a_damaged_checkpoint_is_refused_by_eval_in_one_line(
    synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    final = train(tiny_train_config(synthetic_dataset, out, steps=2, save_every=2))
    data = bytearray((final / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (final / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(final), "--episodes", "1", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"damaged checkpoint {final}: model.safetensors does not match its checksum" in err[0]
    # the same from worker processes: the error comes back to the parent, the workers stop
    assert main(["eval", "--checkpoint", str(final), "--episodes", "2", "--workers", "2",
                 "--out", str(tmp_path / "eval2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"damaged checkpoint {final}: model.safetensors does not match its checksum" in err[0]


def test_leftovers_of_an_interrupted_save_are_cleaned_and_latest_recovered(synthetic_dataset: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_train_config(synthetic_dataset, out, steps=4, save_every=2))
    ckpts = out / "checkpoints"
    # what a kill between the two renames of a swap leaves: step 4 set aside, no step 4, `latest` dangling
    os.replace(ckpts / "step-00000004", ckpts / ".step-00000004.old-12345")
    (ckpts / ".step-00000002.tmp-abcdef").mkdir()
    os.symlink("step-00000002", ckpts / ".latest.tmp-999")
    assert latest_checkpoint(out) == (ckpts / "step-00000002").resolve()  # readers fall back meanwhile
    final = train(tiny_train_config(synthetic_dataset, out, steps=4, save_every=2, resume="latest"))
    assert final == ckpts / "step-00000004" and (ckpts / "step-00000004" / "manifest.json").is_file()
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000002", "step-00000004"]


def test_resume_continues_the_stored_schedule_and_extending_is_explicit(
    synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    short = tmp_path / "short"
    train(tiny_train_config(synthetic_dataset, short, steps=4, save_every=2))
    with pytest.raises(ValueError, match="scheduled for 4 steps.*--extend"):
        train(tiny_train_config(synthetic_dataset, short, steps=8, save_every=2, resume="latest"))
    capsys.readouterr()
    extended = train(tiny_train_config(synthetic_dataset, short, steps=8, save_every=2, resume="latest", extend=True))
    assert "--extend: the schedule of 4 steps is stretched to 8" in capsys.readouterr().err
    assert extended.name == "step-00000008" and len(losses(short)) == 8
    saved = json.loads((extended / "train_config.json").read_text())
    assert saved["steps"] == 8 and saved["extend"] is False  # extending is not carried into later resumes
    # a resumed run that keeps its schedule equals the uninterrupted one (exact resume)
    whole = train(tiny_train_config(synthetic_dataset, tmp_path / "whole", steps=4, save_every=2))
    assert_same_weights(whole, short / "checkpoints" / "step-00000004")
