"""The assembled model: the frozen bundle and its builders (see README.md)."""
