"""edgeflock mappers (Modbus, serial) that feed DeviceTwin over MQTT.

Each mapper is its own process (``modbus-mapper``, ``serial-mapper``); nothing here
is imported by the agent or gateway. See ``mappers/README.md``.
"""
