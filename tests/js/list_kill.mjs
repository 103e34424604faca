// Sandbox.list by metadata, then kill, then the sandbox is gone.
// Usage: node list_kill.mjs SANDBOX_ID TAG
import { Sandbox } from 'e2b';
import { emit, sandboxIdArg, step } from './lib.mjs';

const id = sandboxIdArg();
const tag = process.argv[3] ?? 'none';
const listed = async () =>
  (await Sandbox.list({ query: { metadata: { tag } } }).nextItems()).map((s) => ({
    sandboxId: s.sandboxId,
    metadata: s.metadata,
    state: s.state,
  }));

const result = { listed: await step(listed) };
const sbx = await Sandbox.connect(id);
result.kill = await step(() => sbx.kill());
result.running = await step(() => sbx.isRunning());
result.listedAfter = await step(listed);
result.getInfoAfter = await step(() => Sandbox.getInfo(id));
result.killAgain = await step(() => Sandbox.kill(id));
emit(result);
