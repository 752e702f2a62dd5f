"""I2V-Adapter: image-to-video generation with a cross-frame attention adapter on a frozen text-to-video model."""
__version__ = "0.1.0"
