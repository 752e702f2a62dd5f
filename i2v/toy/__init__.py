"""The CPU toy world: its models' builder, base pretraining and evaluation (see README.md)."""
