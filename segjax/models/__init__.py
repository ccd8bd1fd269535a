"""Models: encoders, decoders and their registries, the builder, pretrained weights."""
