"""Sandboxes as Docker containers: see backend.py. With the image builder (workers/images/), the
only code that imports the Docker SDK."""
