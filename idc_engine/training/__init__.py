"""The training engine: configuration, devices and strategy, objectives, and the custom loop."""
