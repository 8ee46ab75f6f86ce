"""Helpers of the gated real-ComfyUI test (tests/test_comfyui_real.py): tiny model files, a UI->API
converter and a Playwright script for the real frontend."""
