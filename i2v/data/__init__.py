"""i2v.data"""
