"""edgeagent: the edgeflock agent that runs on each board."""
