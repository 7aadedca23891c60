"""Metrics through one door (logger.py: JSONL, TensorBoard, W&B, the console), Ray gauges for the
dashboard, our Grafana dashboard, and the plots of a run."""
