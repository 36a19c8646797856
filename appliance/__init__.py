"""The gateway appliance: composes capture, pipeline, shadows, image sync, canary and metrics."""
