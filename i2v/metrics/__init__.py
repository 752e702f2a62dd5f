"""i2v.metrics"""
