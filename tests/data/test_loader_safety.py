"""Nothing hangs, nothing is lost: truncated videos with spawned workers, a stuck worker named by its file, a bad
hold-out skipped, the train loader resumable mid-epoch, skipped files counted once."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from videofiles import write_video

from i2v.data import ClipSpec, SyntheticVideos, VideoDataModule
from i2v.data.datamodule import EpochShuffleSampler, collate_videos
from i2v.data.loader import ResumableLoader

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def _cut_after_header(folder, name="cut"):
    """A faststart mp4 cut right after its header (moov complete, no frame data): a partial download."""
    p = write_video(os.path.join(folder, "_full.mp4"), num_frames=40, faststart=True)
    data = open(p, "rb").read()
    os.remove(p)
    out = os.path.join(folder, f"{name}.mp4")
    open(out, "wb").write(data[: data.find(b"mdat") + 8])
    return out


def _folder(tmp_path, good=2):
    root = tmp_path / "videos"
    root.mkdir()
    _cut_after_header(str(root))
    for i in range(good):
        write_video(root / f"good{i}.mp4")
    for p in root.glob("*.mp4"):
        p.with_suffix(".txt").write_text("a clip")
    return root


SCRIPT = textwrap.dedent("""
    import sys, time
    from i2v.data import FolderVideos, VideoDataModule

    _load = FolderVideos.load
    def load(self, index):  # top level: also runs in spawned workers, which re-import this script
        if self.paths[index].endswith("stuck.mp4"):
            time.sleep(3600)
        return _load(self, index)
    FolderVideos.load = load

    if __name__ == "__main__":
        root, timeout = sys.argv[1], float(sys.argv[2])
        dm = VideoDataModule({"_target_": "i2v.data.FolderVideos", "root": root}, num_frames=4, stride=1, size=16,
                             batch_size=1, num_workers=2, val_fraction=0, drop_last=False, worker_timeout=timeout)
        dm.setup("fit")
        try:
            n = sum(1 for _ in dm.train_dataloader())
        except RuntimeError as e:
            print("ERROR", type(e).__name__, e, flush=True)
            sys.exit(3)
        print("BATCHES", n, flush=True)
""")


def _run_script(tmp_path, root, timeout):
    script = tmp_path / "load_all.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.abspath(REPO))
    return subprocess.run([sys.executable, str(script), str(root), str(timeout)], capture_output=True, text=True,
                          timeout=240, env=env, cwd=tmp_path)


def test_truncated_video_with_workers_finishes_and_stuck_worker_is_named(tmp_path):
    root = _folder(tmp_path)
    r = _run_script(tmp_path, root, timeout=120)
    assert r.returncode == 0 and "BATCHES 3" in r.stdout, r.stdout + r.stderr[-2000:]
    # a worker that never returns: a clear error naming the file, not a hang
    (root / "stuck.mp4").write_bytes((root / "good0.mp4").read_bytes())
    (root / "stuck.txt").write_text("a clip")
    # 60 s: spawned workers import torch first, which takes well over 15 s on a loaded 2-core CI machine
    r = _run_script(tmp_path, root, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr[-2000:]
    assert "DataLoaderStuck" in r.stdout and "stuck.mp4" in r.stdout and "worker_timeout" in r.stdout, r.stdout


def test_bad_holdout_file_is_skipped_not_fatal(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    names = ["a", "b", "c"]
    val_pos = int(np.random.default_rng(0).permutation(3)[0])  # the hold-out of split_seed=0, val_fraction 1/3
    for i, n in enumerate(names):
        if i == val_pos:
            _cut_after_header(str(root), n)
        else:
            write_video(root / f"{n}.mp4")
        (root / f"{n}.txt").write_text("clip")
    dm = VideoDataModule({"_target_": "i2v.data.FolderVideos", "root": str(root)}, num_frames=4, stride=1,
                         size=16, batch_size=1, val_fraction=0.34, split_seed=0)
    dm.setup("fit")
    assert dm.val_dataset is None and len(dm.train_dataset) == 2
    assert dm.val_dataloader() == []


def _loader(ds, epoch=0):
    sampler = EpochShuffleSampler(len(ds), seed=5)
    sampler.set_epoch(epoch)
    return ResumableLoader(ds, batch_size=2, sampler=sampler, drop_last=True, collate_fn=collate_videos)


def test_train_loader_resumes_mid_epoch_exactly():
    ds = SyntheticVideos(n_items=12, num_frames=2, size=8, seed=0)
    full = [b["meta"] for b in _loader(ds, epoch=1)]
    first = _loader(ds, epoch=1)
    it = iter(first)
    head = [next(it)["meta"] for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    resumed = _loader(ds, epoch=1)
    resumed.load_state_dict(state)
    assert len(resumed) == 6  # Lightning counts the epoch's batches from the full length
    tail = [b["meta"] for b in resumed]
    idx = lambda metas: [[m["index"] for m in b] for b in metas]  # noqa: E731
    assert idx(head + tail) == idx(full)
    assert resumed.state_dict() == {"epoch": 1, "batches": 6}
    assert len(list(resumed)) == 6  # the next epoch is whole again
    other = _loader(ds, epoch=2)  # a state of another epoch (an epoch-end checkpoint) skips nothing
    other.load_state_dict(state)
    assert len(list(other)) == 6


def test_skips_counted_once_per_bad_file(tmp_path):
    root = _folder(tmp_path, good=1)
    from i2v.data import FolderVideos

    ds = FolderVideos(root=str(root), clip=ClipSpec(4, 1, 16, hflip=True))
    for j in range(len(ds)):   # cut (bad) then good0: requesting both falls back once onto good0
        ds[j]
    assert ds.skips.totals()["corrupt"] == 1
    ds[0]                      # asked for the bad file again: a second request, a second count
    assert ds.skips.totals()["corrupt"] == 2
    assert any(n.endswith("cut.mp4") for n in ds.skips.recent_names())
    assert torch.equal(ds.loading, torch.full_like(ds.loading, -1))  # nothing left marked as loading


def test_paths_outside_the_data_root_are_skipped_unless_allowed(tmp_path):
    from i2v.data import FolderVideos, WebVidDataset

    secret = tmp_path / "secret"
    secret.mkdir()
    write_video(secret / "s.mp4")
    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "ok.mp4")
    os.symlink(secret / "s.mp4", root / "link.mp4")
    for name in ("ok", "link"):
        (root / f"{name}.txt").write_text("clip")
    ds = FolderVideos(root=str(root), clip=ClipSpec(4, 1, 16, hflip=True))          # sorted: link.mp4, ok.mp4
    assert ds[0]["meta"]["path"].endswith("ok.mp4") and ds.skips.totals()["outside_root"] == 1
    assert FolderVideos(root=str(root), clip=ClipSpec(4, 1, 16, hflip=True),
                        allow_outside_root=True)[0]["meta"]["path"].endswith("link.mp4")
    man = root / "m.jsonl"
    man.write_text('{"path": "../secret/s.mp4", "caption": "c"}\n' f'{{"path": "{secret / "s.mp4"}", "caption": "c"}}\n'
                   '{"path": "ok.mp4", "caption": "c"}\n')
    ds = FolderVideos(manifest=str(man), clip=ClipSpec(4, 1, 16, hflip=True))
    assert [ds[i]["meta"]["path"].endswith("ok.mp4") for i in range(3)] == [True] * 3
    assert ds.skips.totals()["outside_root"] == 2
    csv_path = tmp_path / "w.csv"
    csv_path.write_text("videoid,name\n../secret/s,c\nok,c\n")
    wv = WebVidDataset(str(csv_path), str(root), clip=ClipSpec(4, 1, 16, hflip=True))
    assert wv[0]["meta"]["videoid"] == "ok" and wv.skips.totals()["outside_root"] == 1
