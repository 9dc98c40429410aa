"""The gateway test fixtures (a real store, fake instances, an in-process gateway) for every
gateway test module; they live with the first of them, tests/serving/test_gateway.py."""

from serving.test_gateway import dead_port, gateway, instance, store_home

__all__ = ["dead_port", "gateway", "instance", "store_home"]
