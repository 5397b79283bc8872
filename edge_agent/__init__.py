"""The edge agent: takes simulated sensor readings and share prices on a device, keeps them
in a crash-safe outbox and publishes them to the broker at QoS 1 until acknowledged.

Modules: ``samples`` (a measurement before it has an id), ``sensors`` (pure simulated
sensors), ``quotes`` (share prices behind a circuit breaker, simulated fallback),
``outbox`` (SQLite store of unacknowledged readings), ``agent`` (the loop and MQTT).
"""
