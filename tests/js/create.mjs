// Sandbox.create with the default template and metadata, then getInfo and isRunning.
// Usage: node create.mjs TAG   (TAG goes in the metadata, for Sandbox.list to find)
import { Sandbox } from 'e2b';
import { emit, step } from './lib.mjs';

const tag = process.argv[2] ?? 'none';
const created = await step(async () => {
  const sbx = await Sandbox.create({ metadata: { suite: 'js-sdk', tag }, timeoutMs: 300_000 });
  const info = await sbx.getInfo();
  return {
    sandboxId: sbx.sandboxId,
    hasAccessToken: typeof sbx.envdAccessToken === 'string' && sbx.envdAccessToken.length > 0,
    templateId: info.templateId,
    metadata: info.metadata,
    state: info.state,
    secondsLeft: (info.endAt.getTime() - Date.now()) / 1000,
    running: await sbx.isRunning(),
  };
});
emit({ created });
