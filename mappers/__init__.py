"""edgeflock mappers (Modbus, serial) that feed DeviceTwin over MQTT.

Not built yet: see the mappers issue. Nothing here is imported by the agent or gateway.
"""
