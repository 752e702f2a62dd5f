"""Fixtures for the data tests; the media helpers live in videofiles.py (a unique module name, so test files can
import them next to other folders' conftest modules)."""

import pytest
from videofiles import make_broken, write_video


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """Good clips (40 frames 48x64, 120-frame one, 10-frame one) and broken ones."""
    d = tmp_path_factory.mktemp("media")
    m = {
        "good": write_video(d / "good.mp4"),
        "long": write_video(d / "long.mp4", num_frames=120),
        "short": write_video(d / "short.mp4", num_frames=10),
    }
    m.update(make_broken(str(d), m["good"]))
    return m
