"""batchpredict: batch ImageNet predictions with MXNet on AWS Lambda (or a local stack)."""

__version__ = "0.1.0"
