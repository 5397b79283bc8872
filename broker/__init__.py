"""The Mosquitto configuration Vigil generates (``python -m broker provision``); its public
API is :func:`provision`."""

from broker.provision import BrokerFiles, provision, render_acl

__all__ = ["BrokerFiles", "provision", "render_acl"]
