"""What the Hydra entries (``train.py``, ``sample.py``, ``evaluate.py``, ``app.py``) share: ``config.py`` (the
``${asset:...}`` resolver, path checks, command-line quoting and aliases, one-line errors) and ``rundir.py`` (the
callback that gives every run its own folder). Nothing is imported here, so ``import i2v.cli.config`` stays light."""
