"""`hope-mega plot`: two runs drawn side by side into a PNG; unreadable metrics named by file and line."""

import json

import numpy as np

from hope_mega.cli import main


def write_run(path, losses, val):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": step, "loss": loss, "lr": 1e-3}) + "\n")
            if step in val:
                f.write(json.dumps({"step": step, "val_loss": val[step]}) + "\n")


def colour_pixels(image, hex_colour):
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return int((np.abs(image[..., :3] - rgb).max(-1) < 0.02).sum())


def test_two_runs_side_by_side(tmp_path, capsys):
    import matplotlib.image

    write_run(tmp_path / "a", [8.0 - 0.1 * i for i in range(30)], {10: 7.2, 20: 6.4, 30: 5.5})
    write_run(tmp_path / "b", [8.0 - 0.05 * i for i in range(30)], {15: 7.5, 30: 6.7})
    out = tmp_path / "cmp.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (450, 1200)
    left, right = image[:, :600], image[:, 600:]
    # matplotlib's first two line colours: run a, run b, in both panels.
    for panel in (left, right):
        assert colour_pixels(panel, "#1f77b4") > 100 and colour_pixels(panel, "#ff7f0e") > 100


def test_one_run_defaults_next_to_its_metrics_and_bad_lines_are_named(tmp_path, capsys):
    write_run(tmp_path / "a", [5.0, 4.0], {})
    assert main(["plot", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    assert main(["plot", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hope-mega plot: error: {tmp_path / 'a' / 'metrics.jsonl'}:3: not JSON (")
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == (f"hope-mega plot: error: {tmp_path / 'missing' / 'metrics.jsonl'}: no such "
                                       f"file (is {tmp_path / 'missing'} a train.save_dir?)\n")
