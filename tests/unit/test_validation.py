"""Request validation messages are flattened to the keys the E2B spec uses."""

from __future__ import annotations

from web.api.validation import flatten


def test_validation_messages_are_flattened_to_spec_keys() -> None:
    msgs = {
        "cmd": ["Missing data for required field."],
        "envVars": {"A": {"value": ["Not a valid string."]}},
        "extra": ["Unknown field."],
    }
    assert flatten(msgs, "requestBody") == {
        "requestBody.cmd": "Missing data for required field.",
        "requestBody.envVars.A": "Not a valid string.",
        "requestBody.extra": "Unknown field.",
    }
