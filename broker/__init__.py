"""The Mosquitto configuration Vigil generates (``python -m broker provision``); its public
API is :func:`provision`. A missing compiler or header for Vigil's broker plugin raises
:class:`PluginBuildError`, which names the Debian package to install."""

from broker.plugin_build import PluginBuildError
from broker.provision import BrokerFiles, TlsListener, provision, render_acl

__all__ = ["BrokerFiles", "PluginBuildError", "TlsListener", "provision", "render_acl"]
