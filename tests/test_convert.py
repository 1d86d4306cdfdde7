import torch

from xwam.cli import main
from xwam.config import get_preset
from xwam.model.checkpoint import load_checkpoint
from xwam.model.transformer import XWAMTransformer


def test_convert_wan_diffusers_folder_to_an_xwam_checkpoint(tmp_path, capsys):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    source = XWAMTransformer(cfg.model)
    source.backbone.save_pretrained(tmp_path / "wan" / "transformer")
    assert main(["convert", f"wan:{tmp_path / 'wan'}", "--preset", "tiny", "--out", str(tmp_path / "ckpt")]) == 0
    model, config, stats = load_checkpoint(tmp_path / "ckpt")
    assert config.preset == "tiny" and stats is None
    for (name, a), b in zip(model.backbone.state_dict().items(), source.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    assert "norm-stats" in capsys.readouterr().out


def test_convert_rejects_unknown_sources(tmp_path, capsys):
    assert main(["convert", "pickle:/x", "--out", str(tmp_path / "o")]) == 2
    assert "release:PATH" in capsys.readouterr().err
