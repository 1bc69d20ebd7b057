"""Networks: DeepLabv2 (ResNet backbones) compatible with the published checkpoints."""
