"""Paddock's HTTP tier (Flask under gunicorn): the E2B-compatible API, the v1 API and the
session WebSocket. What lives where, and where a change of each kind goes: web/README.md."""
