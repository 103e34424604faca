"""Running a session's jobs (one prompt each: the v1 wire calls them "tasks") on the
sandbox's host, one at a time, in order.

Outside the sandbox: the LLM key is read here, at each call, and never passed into it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import posixpath
import time
import uuid
from collections.abc import Callable
from typing import Any

from shared import ids
from shared.errors import BundleNotFound, PaddockError, SandboxError
from shared.netpolicy import check_base_url
from shared.output import LineReader
from shared.redisconn import REDIS_DOWN, persist
from shared.sessions import ChatSession
from workers.agent.llm import Conversation, LlmError, ToolCall, ToolSpec, new_conversation
from workers.host.context import WorkerContext

logger = logging.getLogger(__name__)

# Used by the agent loop only; never set in the sandbox.
LLM_KEYS = frozenset({"LLM_API_KEY", "LLM_BASE_URL", "LLM_MODEL"})
WORKDIR = "/workspace"
TOOL_OUTPUT_LIMIT = 16 << 10
FILE_READ_LIMIT = 256 << 10

SYSTEM_PROMPT = (
    "You are an agent working inside a Linux (Debian) sandbox as the user `user`. Your working "
    f"directory is {WORKDIR}. Use the tools to run shell commands and to read and write files; "
    "relative paths are relative to the working directory. Be concise, and finish with a short "
    "summary of what you did."
)
TOOLS = [
    ToolSpec(
        "run_command",
        "Run a bash command in the sandbox and return its exit code and output.",
        {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    ),
    ToolSpec(
        "read_file",
        "Read a UTF-8 text file from the sandbox.",
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    ),
    ToolSpec(
        "write_file",
        "Write a UTF-8 text file in the sandbox (parent directories are created).",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    ),
]


class Cancelled(Exception):
    pass


class WorkerStopping(Exception):
    """The worker is shutting down: end the job now, leave the queue for the next worker."""


def drain(ctx: WorkerContext, session_id: str) -> None:
    """Run the session's queued jobs until none is left. Only one drain per session runs at a
    time (a lock in Redis); a drain that finds it held returns at once, and the holder picks
    up the new job.

    Redis going away does not end it: each step waits for Redis (persist), and the lock is
    released once Redis is back. Only when Redis stays away past the writers' back-off does it
    stop (logged); the lock then expires by itself."""
    sessions = ctx.sessions
    ttl = int(ctx.settings.llm_timeout * 2 + 60)
    owner = uuid.uuid4().hex
    what = f"agent runner of session {session_id}"
    try:
        if not persist(lambda: sessions.take_runner(session_id, owner, ttl), what):
            return
    except REDIS_DOWN:
        return  # logged by persist; nothing was taken that the TTL would not free
    try:
        while True:
            session = persist(lambda: sessions.load(session_id), what)
            if session is None or session.ended or ctx.stopping.is_set():
                return
            token = uuid.uuid4().hex
            job = persist(functools.partial(sessions.next_job, session_id, token), what)
            if job is None:
                persist(lambda: sessions.drop_runner(session_id, owner), what)
                # A job pushed between our last look and the release would wait forever.
                if persist(lambda: sessions.pending_jobs(session_id), what) and persist(
                    lambda: sessions.take_runner(session_id, owner, ttl), what
                ):
                    continue
                return
            persist(lambda: sessions.taken(session_id), what)
            JobRun(ctx, session, job["task_id"], ttl).run(job["prompt"])
    except REDIS_DOWN:
        logger.error("session %s: Redis stayed down, its queued jobs wait", session_id)
    finally:
        # Past the back-off (logged by persist) the lock's TTL frees it.
        with contextlib.suppress(*REDIS_DOWN):
            persist(lambda: sessions.drop_runner(session_id, owner), what)


def recover(ctx: WorkerContext) -> list[str]:
    """At worker start: close the job each of this host's sessions was running when the
    previous worker died (an ``error`` and an ``exit``, so clients are not left waiting), and
    return the sessions that still have queued jobs, to be drained again."""
    sessions = ctx.sessions
    pending = []
    for session_id in sessions.live_ids():
        s = sessions.load(session_id)
        if s is None or s.host_id != ctx.settings.host_id or s.ended:
            continue
        job_id = sessions.current_job(session_id)
        if job_id:
            logger.warning("session %s job %s: lost with the previous worker", session_id, job_id)
            for frame in (
                {
                    "type": "error",
                    "task_id": job_id,
                    "code": "worker_restarted",
                    "message": "The host worker restarted while the task ran",
                },
                {"type": "exit", "task_id": job_id, "exit_code": 1, "stop_reason": "error"},
            ):
                sessions.emit(session_id, frame)
            sessions.end_job(session_id, job_id)
        sessions.drop_runner(session_id)
        if sessions.pending_jobs(session_id):
            pending.append(session_id)
    return pending


class JobRun:
    """One job: a prompt run to its end (by the agent loop or, for a shell agent, as one command),
    its frames appended to the session's history under its id (``task_id`` on the wire)."""

    def __init__(self, ctx: WorkerContext, session: ChatSession, job_id: str, ttl: int) -> None:
        self.ctx = ctx
        self.s = session
        self.job_id = job_id
        self.ttl = ttl
        self.running_pid: str | None = None
        # Whether the last command the job ran was killed for running out of memory.
        self.oom_killed = False
        # Set once the output budgets are full: later output frames are dropped.
        self.output_cut = False

    # -- events ------------------------------------------------------------------------------
    def emit(self, kind: str, **fields: Any) -> None:
        """Append an event, waiting for Redis if it is away (its token keeps a retry from
        appending it twice). Raises REDIS_DOWN errors once the writers' back-off gives up."""
        frame = {"type": kind, "task_id": self.job_id, **fields}
        sid, token = self.s.session_id, uuid.uuid4().hex
        persist(lambda: self.ctx.sessions.emit(sid, frame, token), f"event of session {sid}")

    def emit_output(self, kind: str, data: str) -> None:
        """A stdout/stderr frame, if the session's and the tenant's output budgets allow it;
        past them one frame says why and later output stays out of the history (the agent
        itself still sees its commands' output)."""
        if self.output_cut:
            return
        s = self.ctx.settings
        full = self.ctx.sessions.charge_output(
            self.s.session_id,
            self.s.tenant_id,
            len(data.encode()),
            s.session_output_bytes,
            s.tenant_output_bytes,
        )
        if full is None:
            self.emit(kind, data=data)
            return
        self.output_cut = True
        setting = (
            "PADDOCK_SESSION_OUTPUT_BYTES" if full == "session" else "PADDOCK_TENANT_OUTPUT_BYTES"
        )
        self.emit(
            "stderr",
            data=f"[paddock] output truncated: the {full}'s streamed output reached its budget "
            f"({setting}); the rest of this task's output is not kept\n",
        )

    def exit(self, exit_code: int, stop_reason: str) -> None:
        self.emit("exit", exit_code=exit_code, stop_reason=stop_reason, oom_killed=self.oom_killed)
        logger.info(
            "session %s job %s: %s (exit %d)",
            self.s.session_id,
            self.job_id,
            stop_reason,
            exit_code,
        )

    def check_cancel(self) -> None:
        if self.ctx.stopping.is_set():
            raise WorkerStopping()
        self.ctx.sessions.renew_runner(self.s.session_id, self.ttl)
        sessions = self.ctx.sessions
        session = sessions.load(self.s.session_id)
        if sessions.cancel_requested(self.s.session_id, self.job_id) or (
            session is None or session.ended
        ):
            raise Cancelled()

    # -- running -----------------------------------------------------------------------------
    def run(self, prompt: str) -> None:
        sid = self.s.session_id
        persist(
            lambda: self.ctx.sessions.begin_job(sid, self.job_id),
            f"start of job {self.job_id}",
        )
        self.emit("task_started")
        # Its size only: a prompt (or a shell command) may hold anything the user typed.
        logger.info(
            "session %s job %s: started (%d bytes)",
            self.s.session_id,
            self.job_id,
            len(prompt.encode("utf-8", "replace")),
        )
        try:
            if self.s.agent.get("kind") == "shell":
                code, _ = self.run_command(prompt)
                self.exit(code, "end_turn")
            else:
                self.agent_loop(prompt)
        except Cancelled:
            self.exit(130, "cancelled")
        except WorkerStopping:
            self.kill_running()
            self.emit(
                "error",
                code="worker_restarted",
                message="The host worker stopped while the task ran",
            )
            self.exit(1, "error")
        except (LlmError, PaddockError) as exc:
            self.emit("error", code=exc.code, message=exc.message)
            self.exit(1, "error")
        except Exception:
            logger.exception("session %s job %s failed", self.s.session_id, self.job_id)
            self.emit("error", code="internal_error", message="The task failed unexpectedly")
            self.exit(1, "error")
        finally:
            persist(self._clear_job, f"end of job {self.job_id}")

    def _clear_job(self) -> None:
        self.ctx.sessions.end_job(self.s.session_id, self.job_id)

    def kill_running(self) -> None:
        """Stop the command the job was running (the worker is going away)."""
        pid = self.running_pid
        if pid:
            self.ctx.processes.kill(self.s.sandbox_id, pid)
            self.ctx.plog.forget(self.s.sandbox_id, pid)
            self.running_pid = None

    def bundle_values(self) -> dict[str, str]:
        """The session's bundles as they are now (a rotation takes effect at the next use)."""
        merged: dict[str, str] = {}
        for name in self.s.secrets:
            try:
                merged.update(self.ctx.secrets.values(self.s.tenant_id, name))
            except BundleNotFound:
                continue
        return merged

    def run_command(self, command: str) -> tuple[int, str]:
        """Run ``command`` in the sandbox, streaming its output as events. Returns the exit
        code and the (capped) output. Raises Cancelled (the process group is killed)."""
        env = {k: v for k, v in self.bundle_values().items() if k not in LLM_KEYS}
        sid = self.s.sandbox_id
        pid = ids.process_id()
        procs, plog = self.ctx.processes, self.ctx.plog
        procs.spawn(sid, pid, command, env, WORKDIR, self.s.tenant_id).start()
        self.running_pid = pid
        captured: list[str] = []
        size = 0
        last = "0-0"
        lines = LineReader()  # a line printed in several chunks comes out once, whole
        deadline = time.monotonic() + self.ctx.settings.agent_command_timeout
        try:
            while True:
                self.check_cancel()
                if time.monotonic() > deadline:
                    procs.kill(sid, pid)
                    limit = self.ctx.settings.agent_command_timeout
                    self.emit("stderr", data=f"[paddock] command timed out after {limit:.0f}s\n")
                    return 124, "".join(captured) + f"\n[timed out after {limit:.0f}s]\n"
                out = plog.read_new(sid, pid, last, block_ms=500, lines=lines)
                last = out.last_id
                for kind, got in (("stdout", out.stdout), ("stderr", out.stderr)):
                    if got:
                        data = "\n".join(x.text for x in got) + "\n"
                        self.emit_output(kind, data)
                        if size < TOOL_OUTPUT_LIMIT:
                            captured.append(data)
                            size += len(data)
                if out.finished:
                    code = out.exit_code if out.exit_code is not None else 1
                    self.oom_killed = out.oom_killed
                    text = "".join(captured)
                    if size >= TOOL_OUTPUT_LIMIT:
                        text = text[:TOOL_OUTPUT_LIMIT] + "\n[output truncated]\n"
                    return code, text
                if not plog.exists(sid, pid):
                    raise SandboxError("the command's process was lost")
        except Cancelled:
            procs.kill(sid, pid)
            raise
        finally:
            if not self.ctx.stopping.is_set():
                plog.forget(sid, pid)
                self.running_pid = None

    def agent_loop(self, prompt: str) -> None:
        llm = self.s.llm
        values = self.bundle_values()
        model = llm.get("model") or values.get("LLM_MODEL") or ""
        max_turns = int(self.s.agent.get("max_turns") or self.ctx.settings.agent_max_turns)
        conv = new_conversation(
            vendor=llm["vendor"],
            model=model,
            system=SYSTEM_PROMPT,
            tools=TOOLS,
            prompt=prompt,
            timeout=self.ctx.settings.llm_timeout,
        )
        # A session is one conversation: each job continues where the last one left off.
        earlier = self.ctx.sessions.load_conversation(self.s.session_id)
        if earlier:
            conv.continue_from(earlier, prompt, self.ctx.settings.agent_history_bytes)
        try:
            self.turns(conv, max_turns)
        finally:
            # Whatever ended the job (the answer, an error, a cancel), the next one goes on
            # from the last consistent state.
            current = self.ctx.sessions.load(self.s.session_id)
            if current is not None and not current.ended:
                self.ctx.sessions.save_conversation(
                    self.s.session_id, conv.snapshot(), int(self.s.expires_at - time.time())
                )

    def turns(self, conv: Conversation, max_turns: int) -> None:
        llm = self.s.llm
        for _ in range(max_turns):
            self.check_cancel()
            values = self.bundle_values()
            key = values.get("LLM_API_KEY")
            if not key:
                raise LlmError("llm_key_missing", "No LLM_API_KEY in the session's secret bundles")
            base_url = llm.get("base_url") or values.get("LLM_BASE_URL") or None
            allowed = self.ctx.settings.llm_allowed_hosts
            if base_url:
                check_base_url(base_url, allowed)  # the clear error; the client checks again
            turn = conv.step(api_key=key, base_url=base_url, allowed_hosts=allowed)
            for text in turn.texts:
                if text.strip():
                    self.emit("message", text=text)
            if not turn.tool_calls:
                self.exit(0, "end_turn")
                return
            results = []
            for call in turn.tool_calls:
                self.check_cancel()
                self.emit("tool_call", name=call.name, input=call.input)
                output, is_error = self.tool(call)
                results.append((call, output, is_error))
            conv.add_tool_results(results)
        self.exit(1, "max_turns")

    def tool(self, call: ToolCall) -> tuple[str, bool]:
        handlers: dict[str, Callable[[dict[str, Any]], str]] = {
            "run_command": self._tool_run,
            "read_file": self._tool_read,
            "write_file": self._tool_write,
        }
        handler = handlers.get(call.name)
        if handler is None:
            return f"unknown tool {call.name!r}", True
        if call.input_error:
            return call.input_error, True
        try:
            return handler(call.input), False
        except (KeyError, TypeError):
            return f"bad arguments for {call.name}: {call.input!r}"[:500], True
        except SandboxError as exc:
            return exc.message, True

    def _tool_run(self, args: dict[str, Any]) -> str:
        code, output = self.run_command(str(args["command"]))
        return f"exit code {code}\n{output}"

    def _path(self, raw: Any) -> str:
        path = str(raw)
        return path if path.startswith("/") else posixpath.join(WORKDIR, path)

    def _tool_read(self, args: dict[str, Any]) -> str:
        data = self.ctx.backend.read_file(self.s.sandbox_id, self._path(args["path"]))
        text = data[:FILE_READ_LIMIT].decode("utf-8", "replace")
        return text + ("\n[truncated]" if len(data) > FILE_READ_LIMIT else "")

    def _tool_write(self, args: dict[str, Any]) -> str:
        content = str(args["content"])
        path = self._path(args["path"])
        self.ctx.backend.write_file(self.s.sandbox_id, path, content.encode())
        return f"wrote {len(content.encode())} bytes to {path}"
