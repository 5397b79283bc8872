"""Vigil's shared contract: what every service speaks.

Topics (``vigil.topics``), message formats (``vigil.messages``), typed settings
(``vigil.settings``), the MQTT connection helper (``vigil.mqtt``), the standard
Prometheus metrics (``vigil.metrics``), retry with backoff (``vigil.retry``), logging
(``vigil.logs``) and the services' command-line prologue (``vigil.cli``). No module here
imports a service.
"""

__version__ = "0.1.0"
