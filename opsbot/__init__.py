"""opsbot: deploy ML models as real-time HTTP services on machines you own."""

__version__ = "0.1.0"
