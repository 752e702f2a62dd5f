"""i2v.diffusion"""
