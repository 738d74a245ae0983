"""`sparge-diffusers calibrate`: a JSON that `generate --calibration` and `SpargeConfig` use."""

import json

from sparge_diffusers.calibration import load_calibration


def test_calibrate_then_generate_with_it(cli, fast, tmp_path):
    target = tmp_path / "cal.json"
    code, out, err = cli("calibrate", "a red ball rolling", "-o", target, "--target-error", "0.1", *fast)
    assert code == 0, err
    data = json.loads(target.read_text())
    assert data["format"] == "sparge-calibration" and data["target_error"] == 0.1
    calibration = load_calibration(str(target))
    assert len(calibration.layers) == 6 and all(len(v) == 4 for v in calibration.layers.values())  # 6 x 4 heads
    assert calibration.calls > 0 and "layers" in out
    code, out, err = cli("generate", "a red ball rolling", "-o", tmp_path / "v.mp4", "--target-error", "0.1",
                         "--calibration", target, *fast)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "v.mp4.json").read_text())
    assert sidecar["sparge"]["calibration"] == str(target)


def test_calibration_errors_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = cli("generate", "x", "-o", tmp_path / "v.mp4", "--calibration", bad)
    assert code == 2 and "--calibration" in err and "not a sparge-diffusers calibration" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli("calibrate", "x", "-o", tmp_path / "c.json", "--target-error", "2")
    assert code == 2 and "target_error" in err and len(err.strip().splitlines()) == 1
