"""The model side of Luanti Voyager: starter model, loading, prompts, LoRA, engine.

Everything here is importable without Django settings except the management
commands under ``inference/management/``.
"""
