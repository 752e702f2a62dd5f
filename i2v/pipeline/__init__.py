"""The assembled model (see README.md): the frozen :class:`Bundle` with one builder per backbone, and the
sampling pipeline :class:`I2VPipeline` built once from typed :class:`SamplingSettings`."""
from .bundle import BackboneBuilder, Bundle, build_bundle, check_paths
from .sampling import FSPSettings, I2VOutput, I2VPipeline, SamplingSettings, resolve_device

__all__ = ["BackboneBuilder", "Bundle", "build_bundle", "check_paths", "FSPSettings", "I2VOutput", "I2VPipeline",
           "SamplingSettings", "resolve_device"]
