"""i2v.checkpoints"""
