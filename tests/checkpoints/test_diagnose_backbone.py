"""``scripts/diagnose_adapter.py`` on a tiny SD1.5 backbone in the real file layouts (single file, AnimateDiff
motion file, VAE folder, tokenizer, IP-Adapter + CLIP vision folder, an I2V-Adapter checkpoint)."""
import math

from script_loader import load_script
from test_real_backbone_e2e import _adapter, _files


def _script():
    return load_script("diagnose_adapter")


def test_diagnose_script_on_a_tiny_sd15_backbone(tmp_path, capsys):
    backbone = _files(tmp_path, "sd15") + ["adapter=full"]
    _adapter(tmp_path, backbone)                              # W'_O non-zero: the adapter changes the output
    args = backbone + [f"ckpt={tmp_path / 'adapter.safetensors'}", "data=synthetic", "data.size=32",
                       "data.num_frames=4", "n_clips=2", "timesteps=[100,900]", "device=cpu",
                       f"json={tmp_path / 'diag.json'}"]
    res = _script().main(args)
    printed = capsys.readouterr().out
    assert "| 900 |" in printed and "adapter=full" in printed
    table = res["table"]
    assert set(table) == {"100", "900"} and res["n_clips"] == 2 and res["backbone"] == "sd15"
    for row in table.values():
        assert all(math.isfinite(v) and v > 0 for v in row.values())
        assert row["adapter_on"] != row["adapter_off"]
    assert (tmp_path / "diag.json").is_file()
