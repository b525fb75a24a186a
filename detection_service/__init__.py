"""The detection service: rules over the logs, alerts, their delivery (docs/detections.md)."""
