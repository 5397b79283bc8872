"""The web console: static pages under ``/console/`` that call the JSON API with the token the
user types in (:mod:`api.console.pages`), and the server-sent events stream of a device's
readings they chart live (:mod:`api.console.live`).

This package's ``__init__`` imports nothing, so :mod:`api.auth` can take the console's public
paths from :mod:`api.console.assets` without an import cycle.
"""
