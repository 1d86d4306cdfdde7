import pickle

from xwam.model.checkpoint import CheckpointError
from xwam.processes import portable_error


class NeedsTwoArguments(ValueError):
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")


def test_an_error_that_cannot_be_rebuilt_becomes_a_runtime_error_with_its_text():
    error = portable_error(NeedsTwoArguments("ckpt", "bad"))
    assert type(error) is RuntimeError and str(error) == "NeedsTwoArguments: ckpt: bad"
    pickle.loads(pickle.dumps(error))


def test_errors_that_can_be_rebuilt_cross_unchanged():
    plain = ValueError("x")
    assert portable_error(plain) is plain
    damaged = CheckpointError("/runs/a", "model.safetensors does not match its checksum")
    assert portable_error(damaged) is damaged
    rebuilt = pickle.loads(pickle.dumps(damaged))
    assert type(rebuilt) is CheckpointError and str(rebuilt) == str(damaged) and rebuilt.reason == damaged.reason
