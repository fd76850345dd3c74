"""rktlet: a Kubernetes CRI v1 runtime on Twisted that keeps rkt's pod model."""

__version__ = "0.1.0"
