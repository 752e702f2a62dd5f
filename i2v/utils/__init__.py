"""Small helpers with no model in them: ``io.py`` (atomic, non-clobbering writers for videos, frames, strips and
JSON; image loading and resizing)."""
