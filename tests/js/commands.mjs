// sandbox.commands.run through Sandbox.connect: a failing command (CommandExitError with its
// exit code and output), and one whose stdout reaches onStdout while it runs: it waits (30 s at
// most) for a file that this script writes only once onStdout has seen its first line.
// Usage: node commands.mjs SANDBOX_ID
import { CommandExitError, Sandbox } from 'e2b';
import { emit, sandboxIdArg, step } from './lib.mjs';

const sbx = await Sandbox.connect(sandboxIdArg());

const failing = await step(async () => {
  try {
    await sbx.commands.run('echo hi; echo err >&2; exit 3');
  } catch (err) {
    if (err instanceof CommandExitError) {
      return { isCommandExitError: true, exitCode: err.exitCode, stdout: err.stdout, stderr: err.stderr };
    }
    throw err;
  }
  return { isCommandExitError: false };
});

const go = `/tmp/js-go-${process.pid}`;
const chunks = [];
let signalled = null;
const streamed = await step(async () => {
  const res = await sbx.commands.run(
    `echo ready; for i in $(seq 300); do [ -e ${go} ] && break; sleep 0.1; done; ` +
      `if [ -e ${go} ]; then echo 'go seen'; else echo 'no go'; fi; echo "$GREETING from $(pwd)"`,
    {
      envs: { GREETING: 'hello' },
      cwd: '/tmp',
      onStdout: (data) => {
        chunks.push(data);
        if (signalled === null && chunks.join('').includes('ready\n')) {
          signalled = step(() => sbx.files.write(go, 'go'));
        }
      },
    },
  );
  return { exitCode: res.exitCode, stdout: res.stdout, stderr: res.stderr, chunks };
});

emit({ failing, streamed, go, signalled: await signalled });
