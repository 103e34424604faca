"""A host worker starts without the LLM vendors' SDKs: importing them costs ~3 s of CPU, which
every worker start (and restart) paid before any agent task asked for them. They are loaded by
the first conversation, and the names the agent package exports still resolve."""

from __future__ import annotations

import subprocess
import sys


def test_the_host_worker_imports_no_llm_sdk_until_a_conversation_needs_one() -> None:
    code = (
        "import sys, workers.host.app, workers.agent.jobs\n"
        "print(sorted(m for m in ('anthropic', 'openai') if m in sys.modules))\n"
        "from workers.agent import llm\n"
        "llm.new_conversation(vendor='openai', model='m', system='', tools=[], prompt='p')\n"
        "print(sorted(m for m in ('anthropic', 'openai') if m in sys.modules))\n"
        "print(llm.AnthropicConversation.__name__, llm.ANTHROPIC_DEFAULT_URL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out == [
        "[]",
        "['openai']",  # only the vendor asked for
        "AnthropicConversation https://api.anthropic.com",
    ]


def test_an_unknown_name_of_the_llm_module_is_still_an_attribute_error() -> None:
    from workers.agent import llm

    try:
        llm.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")
