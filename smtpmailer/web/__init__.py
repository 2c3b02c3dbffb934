"""The status HTTP service: health, metrics, queue API and dashboard."""
