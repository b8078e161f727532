"""Celery tasks and the RLHF pipeline."""
