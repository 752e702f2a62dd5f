"""Config helpers shared by the entries and tests: the ``${asset:...}`` paths (from ``i2v.utils.paths``), the
command-line quoting that lets ``stage=2`` select ``configs/stage/2.yaml`` and the entries' one-line errors."""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable

# the path helpers live in i2v.utils.paths (importing it registers the ${asset:...} resolver); re-exported here
# for the entries and tests
from i2v.utils.paths import ASSETS, CONFIGS, asset_path, missing_paths, portable_paths  # noqa: F401


# Config groups whose options have numeric names (configs/stage/1.yaml, 2.yaml): Hydra's override parser reads
# `stage=2` as the integer 2 and rejects it as a group choice, so the entries quote such choices before Hydra parses
# the command line (`stage=2` -> `stage='2'`, `stage=1,2` -> `stage='1','2'`).
NUMERIC_GROUPS = ("stage",)


def quote_numeric_choices(overrides: list[str]) -> list[str]:
    """Command-line overrides with numeric choices of ``NUMERIC_GROUPS`` quoted, so ``stage=2`` selects stage/2.yaml."""
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        choices = value.split(",")
        if sep and key.lstrip("~+") in NUMERIC_GROUPS and all(c.isdigit() for c in choices):
            arg = key + "=" + ",".join(f"'{c}'" for c in choices)
        out.append(arg)
    return out


# Short sampling keys for sample.py / evaluate.py (`python sample.py ckpt=... t0=0.8 p=0.5`): each is rewritten to
# its key in the one sampling config before Hydra parses the command line.
SAMPLING_ALIASES = {"t0": "t0", "p": "p", "cfg": "guidance_scale", "guidance_scale": "guidance_scale",
                    "steps": "steps", "frames": "num_frames", "num_frames": "num_frames", "scheduler": "scheduler",
                    "negative_prompt": "negative_prompt"}


def expand_sampling_aliases(overrides: list[str]) -> list[str]:
    """``t0=0.8`` -> ``sampling.t0=0.8`` (also ``p``, ``steps``, ``cfg``/``guidance_scale``, ``frames``/``num_frames``,
    ``scheduler``, ``negative_prompt``); sweeps (``p=0.1,0.5``) and ``+``/``~`` prefixes are kept."""
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        prefix = key[: len(key) - len(key.lstrip("~+"))]
        name = key[len(prefix):]
        if sep and name in SAMPLING_ALIASES:
            arg = f"{prefix.replace('+', '')}sampling.{SAMPLING_ALIASES[name]}={value}"
        out.append(arg)
    return out


# Free-text keys: a prompt is prose ("a cat, in the rain", "it's raining"), but Hydra parses an override's value as
# its grammar (a comma makes a list or a sweep, an apostrophe opens a quoted string), so such prompts stop with
# "Ambiguous value" or a lexer error unless the user quotes them for Hydra inside the shell's quotes.
FREE_TEXT_KEYS = ("prompt", "sampling.negative_prompt")


def _hydra_quoted(text: str) -> str:
    """``text`` as a single-quoted Hydra string that parses back, and resolves in OmegaConf, to ``text`` (a quote is
    escaped with a backslash; backslashes right before a quote, or at the end, are doubled; others are literal in
    Hydra's quoted strings; ``${`` is escaped, and backslashes right before it doubled, so that OmegaConf does not
    read it as an interpolation)."""
    body = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", body)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def quote_free_text(overrides: list[str], keys: tuple[str, ...] = FREE_TEXT_KEYS) -> list[str]:
    """``prompt=a cat, in the rain`` -> ``prompt='a cat, in the rain'`` (also ``sampling.negative_prompt``, so run
    it after :func:`expand_sampling_aliases`): the text is taken as typed. Left alone: values already quoted for
    Hydra, ``null``, and every override of a ``-m``/``--multirun`` command line (there a comma is a sweep)."""
    if any(a in ("-m", "--multirun") for a in overrides):
        return list(overrides)
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if sep and key.lstrip("+") in keys and value and value != "null" and not quoted:
            arg = f"{key}={_hydra_quoted(value)}"
        out.append(arg)
    return out


# Keys renamed on the command line (issue 13: one name for the frame count; one ClipSpec per dataset): old -> new. The entries stop on an
# old key with one line naming the new one, instead of Hydra's "Key 'n_frames' is not in struct".
RENAMED_KEYS = {"data.n_frames": "data.num_frames", "data.dataset.hflip": "data.dataset.clip.hflip"}


def refuse_renamed_keys(overrides: list[str], entry_names: dict[str, str] | None = None) -> list[str]:
    """``overrides`` unchanged; exits (status 2) with one line when one of them sets a renamed key
    (``data.n_frames=16`` -> ``error: data.n_frames is now data.num_frames``) or a key that this entry names
    otherwise (``entry_names``; sample.py: ``out_dir=...`` -> ``error: out_dir is called out in this command``)."""
    for arg in overrides:
        key = arg.partition("=")[0].lstrip("~+")
        if key in RENAMED_KEYS:
            new = RENAMED_KEYS[key]
            said = f"{key} is now {new}"
        elif key in (entry_names or {}):
            new = entry_names[key]
            said = f"{key} is called {new} in this command"
        else:
            continue
        print(f"error: {said} (write {arg.replace(key, new, 1)})", file=sys.stderr, flush=True)
        sys.exit(2)
    return overrides


# What bad input raises (a missing file, an existing output, an unwritable folder, a setting out of range, failed
# batch rows): the entries print these as one line; anything else keeps Python's traceback.
USER_ERRORS = (ValueError, OSError)


def _or_one_line_error(fn: Callable[..., Any], arg: Any, errors: tuple) -> Any:
    """``fn(arg)``; one of ``errors`` ends the process with ``error: <message>`` on stderr and exit status 2, and
    Ctrl-C with one line and status 130, without a traceback, unless ``HYDRA_FULL_ERROR=1`` asks for it."""
    from hydra.errors import InstantiationException

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return fn(arg)
    try:
        return fn(arg)
    except errors as e:
        said = e
    except InstantiationException as e:   # a config's _target_ refused its arguments (a data root with no videos)
        if not isinstance(e.__cause__, errors):
            raise
        said = e.__cause__
    except KeyboardInterrupt:   # Ctrl-C: no traceback; what was written is whole (files are written atomically)
        print("\ninterrupted (Ctrl-C); the files written before it are complete", file=sys.stderr, flush=True)
        sys.exit(130)
    print(f"error: {said}\n(HYDRA_FULL_ERROR=1 shows where it was raised)", file=sys.stderr, flush=True)
    sys.exit(2)


def run_entry(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """``fn(cfg)`` for ``train.py``/``sample.py``/``evaluate.py``: bad input ends the run with ``error: <message>``
    on stderr and exit status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it)."""
    from i2v.data.stats import UnusableData   # (these import torch: not needed until an entry runs)
    from i2v.sampling import BatchFailed

    return _or_one_line_error(fn, cfg, (*USER_ERRORS, BatchFailed, UnusableData))


def run_script(main: Callable[[list[str]], Any], doc: str | None = None, argv: list[str] | None = None) -> int:
    """``main(argv)`` for a script of ``scripts/``: ``-h``/``--help`` prints ``doc`` (the script's docstring: its
    ``key=value`` arguments; ``doc=None`` leaves the flags to the script's own argparse), and bad input -- a missing
    file, a value out of range, a malformed or unknown Hydra override -- ends it with ``error: <message>`` on
    stderr and exit status 2 instead of a traceback (``HYDRA_FULL_ERROR=1`` shows it), as :func:`run_entry` does
    for the entries. Returns 0 for ``sys.exit`` when ``main`` returns."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    argv = sys.argv[1:] if argv is None else list(argv)
    if doc is not None and any(a in ("-h", "--help") for a in argv):
        print(doc.strip())
        return 0
    _or_one_line_error(main, argv, (*USER_ERRORS, OverrideParseException, ConfigCompositionException,
                                    MissingConfigException))
    return 0
