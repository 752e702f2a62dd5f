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
    # the caption probe: the same model and noise as 'adapter on', with the caption dropped and its direction swapped
    assert set(res["captions"]) == {"100", "900"} and "caption probe" in printed
    for t, row in res["captions"].items():
        assert row["caption"] == table[t]["adapter_on"] and row["n_direction"] == 2
        assert math.isfinite(row["no_caption"]) and math.isfinite(row["swapped"])
        assert math.isfinite(row["no_image"]) and math.isfinite(row["no_caption_no_image"])   # the IP-Adapter's image
    assert "image dropped" in printed
    assert (tmp_path / "diag.json").is_file()
    quiet = _script().main(args + ["captions=false", "probes=false", "focus_t=null"])
    assert quiet["captions"] == {} and "caption probe" not in capsys.readouterr().out


def test_diagnose_script_scores_a_noised_kv_adapter_through_its_forward(tmp_path, capsys):
    """``adapter.noised_kv=true`` on the SD1.5 layout: 'adapter on' runs the variant's forward (another loss than
    the paper's forward of the same file), the header and the notes say so, 'adapter off' is unchanged."""
    backbone = _files(tmp_path, "sd15") + ["adapter=full"]
    _adapter(tmp_path, backbone)
    args = backbone + [f"ckpt={tmp_path / 'adapter.safetensors'}", "data=synthetic", "data.size=32",
                       "data.num_frames=4", "n_clips=2", "timesteps=[500]", "device=cpu", "probes=false",
                       "focus_t=null"]
    paper = _script().main(args)
    capsys.readouterr()
    variant = _script().main(args + ["adapter.noised_kv=true"])
    printed = capsys.readouterr().out
    assert variant["noised_kv"] is True and paper["noised_kv"] is False
    assert "noised_kv=true ('adapter on' is that forward)" in printed and "judge it by its samples" in printed
    assert variant["table"]["500"]["adapter_off"] == paper["table"]["500"]["adapter_off"]
    assert variant["table"]["500"]["adapter_on"] != paper["table"]["500"]["adapter_on"]
