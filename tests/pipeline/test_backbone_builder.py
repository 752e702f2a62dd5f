"""Backbone builders are chosen by ``_target_``: a target that is not a BackboneBuilder, or a builder that does not
say which paths it needs and how it builds, is refused with a clear error."""
import pytest
from omegaconf import OmegaConf

from i2v.pipeline.bundle import BackboneBuilder, backbone_builder
from i2v.toy.build import ToyBuilder


def test_target_selects_the_builder():
    cfg = OmegaConf.create({"name": "toy", "_target_": "i2v.toy.build.ToyBuilder"})
    assert isinstance(backbone_builder(cfg), ToyBuilder)


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="no _target_"):
        backbone_builder(OmegaConf.create({"name": "x"}))
    with pytest.raises(ValueError, match="not a BackboneBuilder"):
        backbone_builder(OmegaConf.create({"name": "x", "_target_": "collections.OrderedDict"}))


def test_a_builder_must_define_paths_and_parts():
    class Half(BackboneBuilder):
        def required_paths(self, adapter):
            return []

    with pytest.raises(TypeError, match="build_parts"):
        Half(OmegaConf.create({"name": "half"}))
