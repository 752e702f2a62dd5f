"""i2v.training"""
