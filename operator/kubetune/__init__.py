"""kubetune: declarative LLM fine-tuning on Kubernetes."""

__version__ = "0.1.0"
