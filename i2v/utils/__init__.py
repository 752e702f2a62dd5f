"""Small helpers with no model in them: ``io.py`` (atomic, non-clobbering writers for videos, frames, strips and
JSON; image loading and resizing) and ``tables.py`` (the one reader of CSV / JSON-lines / JSON row files)."""
